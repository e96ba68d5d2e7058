//! The engine: the only code that talks to Docker (bollard) and runs the Postgres client
//! programs, in the target (`docker exec`) or in the sidecar (connect mode).

pub mod container;
pub mod docker;
pub mod pg;

use async_trait::async_trait;
use docker::{DockerClient, DockerError};

/// The container and volume operations that undo a physical restore's switch: a port, so the
/// rollback of every undo state is tested with a fake ([`DockerClient`] is the real one).
#[async_trait]
pub trait Lifecycle: Send + Sync {
    async fn start_container(&self, id: &str) -> Result<(), DockerError>;
    async fn rename_container(&self, id: &str, name: &str) -> Result<(), DockerError>;
    async fn remove_container(&self, id: &str) -> Result<(), DockerError>;
    async fn remove_volume(&self, name: &str) -> Result<(), DockerError>;
}

#[async_trait]
impl Lifecycle for DockerClient {
    async fn start_container(&self, id: &str) -> Result<(), DockerError> {
        DockerClient::start_container(self, id).await
    }

    async fn rename_container(&self, id: &str, name: &str) -> Result<(), DockerError> {
        DockerClient::rename_container(self, id, name).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        DockerClient::remove_container(self, id).await
    }

    async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        DockerClient::remove_volume(self, name).await
    }
}
