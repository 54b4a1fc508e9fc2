//! What a flight owes: the cost of each upstream job that made images,
//! written as it succeeds, and the settling of that bill against the
//! payer's reservation once the flight is over.

use std::sync::Arc;

use super::GenerationService;
use super::flights::{Flight, FlightResult};
use crate::backend::JobOutput;
use crate::domain::{BackendKind, GenerationPlan, Job, MicroUsd};
use crate::spend::{self, Payer};
use crate::store::budget::{Charge, Reservation};

/// What a flight's upstream jobs cost, written as each job succeeds: fal
/// bills every successful output, so images made by a request that then
/// fails (a sibling job failed, a download failed) are paid for too.
#[derive(Default)]
pub(crate) struct Tab(std::sync::Mutex<Bill>);

/// The bill on a [`Tab`].
#[derive(Clone, Debug, Default)]
struct Bill {
    cost: MicroUsd,
    images: u32,
    /// The upstream's billable units, summed over the jobs that reported them.
    billable_units: Option<f64>,
    /// The endpoint whose jobs succeeded (`None`: nothing was made here).
    endpoint: Option<Arc<str>>,
}

impl Tab {
    fn lock(&self) -> std::sync::MutexGuard<'_, Bill> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Add one successful job: its output at its endpoint's price (nothing
    /// offline).
    pub(super) fn add(&self, job: &Job, output: &JobOutput, backend: BackendKind) {
        let cost = match backend {
            BackendKind::Fal => spend::delivered_cost(job, output),
            BackendKind::Local => MicroUsd::ZERO,
        };
        let images = output.images.len().min(usize::from(job.num_images)) as u32;
        let mut bill = self.lock();
        bill.cost = bill.cost.saturating_add(cost);
        bill.images += images;
        if let Some(u) = output.billable_units {
            bill.billable_units = Some(bill.billable_units.unwrap_or(0.0) + u);
        }
        bill.endpoint
            .get_or_insert_with(|| job.endpoint.full().into());
    }

    fn bill(&self) -> Bill {
        self.lock().clone()
    }
}

impl GenerationService {
    /// The money side of a finished flight: what its jobs made is settled
    /// to its real cost (the ledger, the spend metric, the payer's budget),
    /// also when the request failed after some of its images were made (fal
    /// bills them); a reservation for nothing made is released.
    pub(super) async fn account(
        &self,
        plan: &GenerationPlan,
        payer: &Payer,
        reservation: Option<Reservation>,
        flight: &Flight,
        tab: &Tab,
        flown: FlightResult,
    ) -> FlightResult {
        let bill = tab.bill();
        match bill.endpoint {
            Some(endpoint) => {
                if flown.is_ok() {
                    flight.set_spent(bill.cost.0);
                }
                let charge = Charge {
                    key_id: payer.account.as_deref().map(str::to_owned),
                    model: plan.model.id.clone(),
                    // The endpoint that made the images, which fallback may
                    // have moved down the chain.
                    endpoint: endpoint.to_string(),
                    images: bill.images,
                    cost_micro_usd: bill.cost.0,
                    billable_units: bill.billable_units,
                    request_id: payer.request_id.as_deref().map(str::to_owned),
                };
                self.spend.settle(reservation, charge).await;
            }
            None => {
                if let Some(r) = reservation {
                    self.spend.release(r).await;
                }
            }
        }
        flown
    }
}
