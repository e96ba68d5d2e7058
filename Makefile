# pgbackup — everyday commands. Every target works on a machine with Docker and Compose v2; on a
# machine without registry access the images are built locally (scripts/images.sh).
SHELL := /bin/bash
COMPOSE := docker compose
# Makes the image variables (official or local images) visible to Compose.
IMAGES := scripts/deps.sh && eval "$$(scripts/images.sh)"

.PHONY: up down logs status backup list restore verify prune test bench clean images

## up: build what is missing, start the stack, wait until healthy, show targets and backups
up:
	@$(IMAGES) && $(COMPOSE) up -d --build --quiet-pull && scripts/wait-healthy.sh $(COMPOSE)
	@$(COMPOSE) exec -T backup pgctl status
	@scripts/wait-first-backup.sh $(COMPOSE)

## down: stop the stack (volumes and backups are kept)
down:
	$(COMPOSE) down

## logs: follow the sidecar's logs
logs:
	$(COMPOSE) logs -f backup

## status: targets, their settings or label errors, next runs
status:
	$(COMPOSE) exec -T backup pgctl status

## backup: back up every target now (TARGET=project/service for one)
backup:
	$(COMPOSE) exec -T backup pgctl backup --wait $(if $(TARGET),$(TARGET),--all)

## list: committed backups
list:
	$(COMPOSE) exec -T backup pgctl list $(TARGET)

# A terminal for the progress bar when there is one; -T otherwise (CI, pipes).
TTY := $(shell [ -t 0 ] || echo -T)

# make itself only ever exits 0 or 2: pgctl's own exit code is printed when it is not 0, so
# the reason is not lost (scripts that branch on it call `docker compose exec backup pgctl …`).
SAID = code=$$?; [ $$code -eq 0 ] || { echo "make: pgctl exited with code $$code ($(1))" >&2; exit $$code; }

# IDENTITY=key.txt: an age identity for encrypted backups, passed on standard input so that it
# never rests in the sidecar.
KEY = $(if $(IDENTITY),--identity - < $(IDENTITY))

## restore: FILE=latest|<backup id>|<key> [FROM=project/service] [TO=service] [ARGS="--db app --clean"] [IDENTITY=key.txt]
restore:
	@[ -n "$(FILE)" ] || { echo 'usage: make restore FILE=latest|<backup id>|<key> [FROM=…] [TO=…] [ARGS=…] [IDENTITY=key.txt]; see `make list`' >&2; exit 2; }
	$(COMPOSE) exec $(if $(IDENTITY),-T,$(TTY)) backup pgctl restore $(FILE) $(if $(FROM),--from $(FROM)) $(if $(TO),--to $(TO)) $(ARGS) $(KEY); \
	$(call SAID,1 failed and rolled back; 2 bad arguments; 3 Docker or storage unreachable; 4 refused before changing anything)

## verify: re-read stored backups and check their SHA-256 (FILE=… for one, default all; FROM=project/service for whose; IDENTITY=key.txt also decrypts encrypted ones)
verify:
	$(COMPOSE) exec -T backup pgctl verify $(if $(FILE),$(FILE),--all) $(if $(FROM),--from $(FROM)) $(KEY); \
	$(call SAID,1 a backup is damaged or missing; 2 bad arguments; 3 storage unreachable)

## prune: apply retention now (ARGS=--dry-run to only print the plan)
prune:
	$(COMPOSE) exec -T backup pgctl prune $(ARGS)

## test: unit tests and end-to-end tests on the real stack (sets everything up first)
test:
	scripts/test.sh

## images: build or pull the images only
images:
	@$(IMAGES) && env | grep -E '^(POSTGRES|GARAGE|PGBACKUP|PGCTL)_' || true

## bench: backup throughput vs raw pg_dump and a naive pipeline, sidecar memory → BENCHMARKS.md
bench:
	scripts/bench.sh

## clean: remove the stack with its volumes (DELETES the demo database and local Garage data)
clean:
	$(COMPOSE) down -v --remove-orphans
	rm -rf docker/bin
