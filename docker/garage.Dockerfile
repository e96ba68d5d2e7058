# Offline stand-in for dxflrs/garage: the binary from `cargo install garage` at /garage, as in
# the official image, on a local Debian base (scripts/images.sh).
ARG BASE
FROM ${BASE}
COPY garage /garage
CMD ["/garage", "server"]
