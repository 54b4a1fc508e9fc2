//! fal's answers are checked against the plan: at most the images a job
//! asked for are taken (and downloaded), and the `size` answered is the real
//! one, never an upstream's `0x0`.

use base64::Engine;
use fake_fal::{Fault, FaultAction, Op};
use serde_json::json;

use crate::helpers::*;

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(w, h, image::Rgb([10, 120, 200]))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// fal's result answer carrying `images` (each a JSON image object).
fn result_with(app: &TestApp, images: Vec<serde_json::Value>) {
    app.fal.inject(Fault {
        op: Op::Result,
        times: 1,
        action: FaultAction::Respond {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: json!({"images": images, "description": ""}).to_string(),
        },
    });
}

#[actix_web::test]
async fn more_images_than_asked_for_are_dropped_and_the_real_size_is_answered() {
    let app = spawn_app().await;
    let uri = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png(24, 16))
    );
    let flood = vec![json!({"url": uri, "width": 0, "height": 0}); 200];
    result_with(&app, flood);

    let (status, _, body) = json(
        app.post_generation(json!({"prompt":"one please","n":1,"response_format":"b64_json"}))
            .await,
    )
    .await;

    assert_eq!(status, 200, "{}", short(&body.to_string()));
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        body["size"], "24x16",
        "the size of the bytes, not fal's 0x0"
    );
}

#[actix_web::test]
async fn extra_links_are_never_downloaded() {
    let app = spawn_app().await;
    let file = format!("{}/files/1x1-png-0-0-0.png", app.fal.queue_url());
    result_with(
        &app,
        vec![json!({"url": file, "width": 64, "height": 64}); 50],
    );

    let (status, _, body) = json(
        app.post_generation(json!({"prompt":"two please","n":2,"response_format":"b64_json"}))
            .await,
    )
    .await;

    assert_eq!(status, 200, "{}", short(&body.to_string()));
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.fal.count(Op::File),
        2,
        "one download per image asked for"
    );
}

#[actix_web::test]
async fn an_absurd_size_claimed_for_links_is_replaced_by_the_expected_one() {
    let app = spawn_app().await;
    let link = json!({"url": "https://v3.fal.media/files/x.png", "width": 0, "height": 0});
    result_with(&app, vec![link.clone(), link.clone(), link]);

    let (status, _, body) = json(
        app.post_generation(json!({"prompt":"links","n":2,"size":"1792x1024"}))
            .await,
    )
    .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["size"], "1408x768");
}
