//! containerd's lease service, `containerd.services.leases.v1.Leases`, over
//! the in-memory [`LeaseTable`]. The namespace header is required.

use std::sync::Arc;

use imaged_api::containerd::services::leases::v1::leases_server::{Leases, LeasesServer};
use imaged_api::containerd::services::leases::v1::{
    AddResourceRequest, CreateRequest, CreateResponse, DeleteRequest, DeleteResourceRequest, Lease as WireLease,
    ListRequest, ListResourcesRequest, ListResourcesResponse, ListResponse, Resource as WireResource,
};
use imaged_types::wire::timestamp_from_time;
use tonic::{Request, Response, Status};

use super::{admitted_filter, fit_in_message};
use crate::filter::Subject;
use crate::leases::{Lease, LeaseTable, Resource};
use crate::shares::Shares;
use crate::transport::context::{Context, Namespacing};

/// The lease service over a table shared by every connection; a List with a
/// regular expression compiles it in its caller's turn of `shares`' fair
/// queue.
pub fn service(table: Arc<LeaseTable>, shares: Shares) -> LeasesServer<ContainerdLeases> {
    LeasesServer::new(ContainerdLeases { table, shares })
}

/// Adapter from `containerd.services.leases.v1.Leases` to the lease table.
pub struct ContainerdLeases {
    table: Arc<LeaseTable>,
    shares: Shares,
}

fn to_wire(lease: &Lease) -> WireLease {
    WireLease {
        id: lease.id.clone(),
        created_at: Some(timestamp_from_time(lease.created_at)),
        labels: lease.labels.clone(),
    }
}

fn resource(resource: Option<WireResource>) -> Resource {
    let resource = resource.unwrap_or_default();
    (resource.id, resource.r#type)
}

#[tonic::async_trait]
impl Leases for ContainerdLeases {
    async fn create(&self, request: Request<CreateRequest>) -> Result<Response<CreateResponse>, Status> {
        let context = Context::of(&request, Namespacing::Required)?;
        let request = request.into_inner();
        let lease = self
            .table
            .create(context.caller, &context.namespace, request.id, request.labels)?;
        Ok(Response::new(CreateResponse {
            lease: Some(to_wire(&lease)),
        }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = Context::of(&request, Namespacing::Required)?.namespace;
        self.table.delete(&ns, &request.into_inner().id)?;
        Ok(Response::new(()))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let context = Context::of(&request, Namespacing::Required)?;
        let filters = request.into_inner().filters;
        let (filter, _seat) = admitted_filter(&self.shares, context.caller, Subject::Lease, "filters", filters).await?;
        let leases = self.table.list(&context.namespace, &filter)?;
        let leases = fit_in_message(leases.iter().map(to_wire).collect(), "leases")?;
        Ok(Response::new(ListResponse { leases }))
    }

    async fn add_resource(&self, request: Request<AddResourceRequest>) -> Result<Response<()>, Status> {
        let ns = Context::of(&request, Namespacing::Required)?.namespace;
        let request = request.into_inner();
        self.table.add_resource(&ns, &request.id, resource(request.resource))?;
        Ok(Response::new(()))
    }

    async fn delete_resource(&self, request: Request<DeleteResourceRequest>) -> Result<Response<()>, Status> {
        let ns = Context::of(&request, Namespacing::Required)?.namespace;
        let request = request.into_inner();
        self.table
            .delete_resource(&ns, &request.id, &resource(request.resource))?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        request: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let ns = Context::of(&request, Namespacing::Required)?.namespace;
        let resources = self
            .table
            .resources(&ns, &request.into_inner().id)?
            .into_iter()
            .map(|(id, kind)| WireResource { id, r#type: kind })
            .collect();
        Ok(Response::new(ListResourcesResponse { resources }))
    }
}
