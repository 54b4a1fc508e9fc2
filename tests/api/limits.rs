//! The gateway's own limits hold under load: concurrent upstream jobs.

use fake_fal::{FakeConfig, Op};
use serde_json::json;

use crate::helpers::*;

#[actix_web::test]
async fn a_request_of_more_jobs_than_the_limit_runs_them_one_slot_at_a_time() {
    let fake = FakeConfig {
        queue_ms: 30,
        ..FakeConfig::default()
    };
    let app = spawn_app_with_fake(fake, |s| s.limits.max_concurrent_jobs = 1).await;

    // n = 10 is three fal jobs (4 + 4 + 2).
    let (status, _, body) = json(app.post_generation(json!({"prompt":"ten","n":10})).await).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 10);
    let order: Vec<Op> = app
        .fal
        .calls()
        .into_iter()
        .map(|c| c.op)
        .filter(|op| matches!(op, Op::Submit | Op::Result))
        .collect();
    assert_eq!(
        order,
        [
            Op::Submit,
            Op::Result,
            Op::Submit,
            Op::Result,
            Op::Submit,
            Op::Result
        ],
        "each job submitted only once the one before it finished"
    );
}
