//! The admin status page as a person sees it: opened in headless Chromium
//! (Debian's `chromium`), its rendered DOM checked for what the page must
//! show, and a screenshot saved under the test output
//! (`$CARGO_TARGET_DIR/test-output/status-page.png`).

use std::path::PathBuf;
use std::process::Command;

use crate::harness::*;
use crate::{dead_addr, world};

fn chromium() -> PathBuf {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Debian's chromium package is needed (scripts/setup.sh installs it)")
}

pub fn output_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let d = target.join("test-output");
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn headless(profile: &std::path::Path) -> Command {
    let mut c = Command::new(chromium());
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,1400",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Width and height from a PNG's IHDR chunk.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[tokio::test]
async fn status_page_in_headless_chromium_shows_what_an_operator_needs() {
    let (vm1, vm2, vm3) = (FakeVm::start("vm-1"), FakeVm::start("vm-2"), FakeVm::start("vm-3"));
    let edge = Edge::start(
        "us-east1",
        &world(vm1.http, vm2.http, vm3.http, dead_addr(), dead_addr()),
        "",
    )
    .await;
    // A first look starts the traffic card's window.
    assert_eq!(get(edge.admin, "admin", "/", &[]).await.status, 200);
    // Something to show: a request served here, a forward by affinity and
    // one through a tombstone (the peer edge is down; the forward is still
    // recorded).
    assert_eq!(edge.get("app1.repl.co", "/", &[]).await.status, 200);
    let _ = edge.get("app3.repl.co", "/", &[]).await;
    let _ = edge.get("moved.repl.co", "/", &[]).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let url = format!("http://{}/", edge.admin);
    let profile = tempfile::tempdir().unwrap();
    let (url2, p2) = (url.clone(), profile.path().to_path_buf());
    let dom = tokio::task::spawn_blocking(move || {
        let out = headless(&p2).arg("--dump-dom").arg(&url2).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap();
    for want in [
        "<title>edgeplane us-east1 · us-east1-test</title>",
        "<b class=\"ok\" id=\"ready\">ready</b>",
        "<b id=\"version\">1</b>",
        "file snapshot",
        "<h3>use1-a</h3>",
        "<b>100.0%</b> of the ring",
        "usable VMs <b class=\"usable\">2/2</b>",
        "containers per VM in use1-a",
        "CPU per VM in use1-a",
        "This edge's subset: vm-",
        "<td>app3.repl.co</td><td>ap-south1</td><td>affinity</td>",
        "<td>moved.repl.co</td><td>ap-south1</td><td>tombstone</td>",
        "Tombstone hits since start: <b id=\"tombstone-hits\">1</b>",
        "<span id=\"tunnels\">0</span> tunnels open",
    ] {
        assert!(dom.contains(want), "the page lacks {want:?}:\n{dom}");
    }
    // Three requests since the first look, about a second ago; the two
    // forwards to the dead peer edge are 5xx.
    let figure = |id: &str, end: &str| -> f64 {
        let start = dom.find(id).unwrap_or_else(|| panic!("no {id} in the page")) + id.len();
        dom[start..][..dom[start..].find(end).unwrap()].parse().unwrap()
    };
    // The window is as long as the browser took to start (seconds on a
    // cold machine): the rate times the window is the three requests.
    let rps = figure("<b id=\"rps\">", " req/s");
    let window = figure("traffic (last ", " s)");
    let requests = rps * window;
    assert!(
        (2.0..=4.5).contains(&requests),
        "{rps} req/s over {window} s is not the 3 requests made"
    );
    assert!(
        figure("id=\"rate5xx\">5xx ", "/s") > 0.0,
        "the failed forwards count as 5xx"
    );
    assert_eq!(
        dom.matches("<svg").count(),
        2,
        "one histogram each for containers and CPU"
    );
    assert!(dom.matches("class=\"bar\"").count() == 20, "10 bars per histogram");
    assert!(!dom.contains("<script"), "the page needs no JavaScript");

    let shot = output_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let (shot2, p3) = (shot.clone(), profile.path().to_path_buf());
    tokio::task::spawn_blocking(move || {
        let out = headless(&p3)
            .arg(format!("--screenshot={}", shot2.display()))
            .arg(&url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    })
    .await
    .unwrap();
    let png = std::fs::read(&shot).expect("screenshot written");
    assert_eq!(png_size(&png), (1280, 1400));
    // A blank page compresses to a few KB; text, tables and bars do not.
    assert!(png.len() > 20_000, "screenshot looks empty ({} bytes)", png.len());
    println!("status page screenshot: {}", shot.display());
}
