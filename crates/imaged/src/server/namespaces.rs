//! containerd's namespace service, `containerd.services.namespaces.v1.Namespaces`,
//! adapted onto the [`Store`].

use imaged_api::containerd::services::namespaces::v1::namespaces_server::{Namespaces, NamespacesServer};
use imaged_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, CreateNamespaceResponse, DeleteNamespaceRequest, GetNamespaceRequest, GetNamespaceResponse,
    ListNamespacesRequest, ListNamespacesResponse, UpdateNamespaceRequest, UpdateNamespaceResponse,
};
use imaged_types::NamespaceName;
use imaged_types::wire::{namespace_from_containerd, namespace_to_containerd};
use tonic::{Request, Response, Status};

use super::{MAX_MESSAGE_BYTES, admitted_filter, fit_in_message};
use crate::error::Error;
use crate::filter::Subject;
use crate::shares::Shares;
use crate::store::Store;
use crate::transport::context;

/// containerd's namespace service over `store`; a List with a regular
/// expression compiles it in its caller's turn of `shares`' fair queue.
pub fn service(store: Store, shares: Shares) -> NamespacesServer<ContainerdNamespaces> {
    NamespacesServer::new(ContainerdNamespaces { store, shares })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Adapter from `containerd.services.namespaces.v1.Namespaces` to the store.
pub struct ContainerdNamespaces {
    store: Store,
    shares: Shares,
}

fn name(name: &str) -> Result<NamespaceName, Error> {
    Ok(NamespaceName::parse("name", name)?)
}

#[tonic::async_trait]
impl Namespaces for ContainerdNamespaces {
    async fn get(&self, request: Request<GetNamespaceRequest>) -> Result<Response<GetNamespaceResponse>, Status> {
        let namespace = self.store.get_namespace(name(&request.into_inner().name)?).await?;
        Ok(Response::new(GetNamespaceResponse {
            namespace: Some(namespace_to_containerd(&namespace)),
        }))
    }

    async fn list(&self, request: Request<ListNamespacesRequest>) -> Result<Response<ListNamespacesResponse>, Status> {
        let caller = context::caller(&request);
        let filter = vec![request.into_inner().filter];
        let (filter, _seat) = admitted_filter(&self.shares, caller, Subject::Namespace, "filter", filter).await?;
        let namespaces = self.store.list_namespaces(filter).await?;
        let namespaces = fit_in_message(namespaces.iter().map(namespace_to_containerd).collect(), "namespaces")?;
        Ok(Response::new(ListNamespacesResponse { namespaces }))
    }

    async fn create(
        &self,
        request: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let namespace = namespace_from_containerd(request.into_inner().namespace).map_err(Error::from)?;
        let namespace = self.store.create_namespace(namespace).await?;
        Ok(Response::new(CreateNamespaceResponse {
            namespace: Some(namespace_to_containerd(&namespace)),
        }))
    }

    async fn update(
        &self,
        request: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let request = request.into_inner();
        let namespace = namespace_from_containerd(request.namespace).map_err(Error::from)?;
        let mask = request.update_mask.map(|m| m.paths).unwrap_or_default();
        let namespace = self.store.update_namespace(namespace, mask).await?;
        Ok(Response::new(UpdateNamespaceResponse {
            namespace: Some(namespace_to_containerd(&namespace)),
        }))
    }

    async fn delete(&self, request: Request<DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        self.store.delete_namespace(name(&request.into_inner().name)?).await?;
        Ok(Response::new(()))
    }
}
