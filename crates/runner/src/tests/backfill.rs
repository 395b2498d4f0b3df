//! The backfill over a delivery log of many pages: it reads back to the
//! window (or to what an earlier pass read), asks for each missed delivery
//! once, and stops on a cursor that does not move.

use std::time::{SystemTime, UNIX_EPOCH};

use domain::triggers::Decision;
use github::Delivery;

use super::harness::{Rig, config};

const DAY: u64 = 24 * 3600;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A failed (502) or succeeded (202) attempt `ago` seconds old.
fn attempt(id: u64, guid: &str, status_code: u64, ago: u64) -> Delivery {
    Delivery {
        id,
        guid: guid.to_owned(),
        status_code: Some(status_code),
        delivered_unix: Some(now() - ago),
        delivered_at: None,
        event: Some("issue_comment".to_owned()),
        action: Some("created".to_owned()),
        status: None,
    }
}

fn failed(ids: impl IntoIterator<Item = u64>, ago: u64) -> Vec<Delivery> {
    ids.into_iter().map(|id| attempt(id, &format!("guid-{id}"), 502, ago)).collect()
}

#[tokio::test(start_paused = true)]
async fn every_page_back_to_the_window_is_read_and_each_missed_delivery_asked_for_once() {
    let rig = Rig::new(config()).await;
    // 250 failed deliveries in the window and 150 older than it, newest
    // first: the third page reaches back past the window, so the pass
    // stops there and never reads the fourth.
    let mut log = failed(151..=400, 3600);
    log.extend(failed(1..=150, 4 * DAY));
    // One of them got through on a second attempt: not asked for.
    log.push(attempt(401, "guid-200", 202, 60));
    rig.github.script.lock().unwrap().deliveries = log;

    let asked = rig.held(rig.runner.backfill()).await.unwrap();
    assert_eq!(asked, 249, "every failed one in the window but the one that got through");
    let pages = rig.github.seen(|seen| seen.delivery_pages.clone());
    assert_eq!(pages, [None, Some("301".to_owned()), Some("201".to_owned())]);
    let mut redelivered = rig.github.seen(|seen| seen.redelivered.clone());
    redelivered.sort_unstable();
    let expected: Vec<u64> = (151..=400).filter(|id| *id != 200).collect();
    assert_eq!(redelivered, expected);

    // Later passes read only back to what the first one read: five new
    // failures, one page, five asks.
    rig.github.script.lock().unwrap().deliveries.extend(failed(402..=406, 30));
    let asked = rig.held(rig.runner.backfill()).await.unwrap();
    assert_eq!(asked, 5);
    assert_eq!(rig.github.seen(|seen| seen.delivery_pages.len()), 4, "one more page");
    assert_eq!(rig.github.seen(|seen| seen.redelivered.len()), 254);

    // Nothing new: one page, nothing asked again.
    assert_eq!(rig.held(rig.runner.backfill()).await.unwrap(), 0);
    assert_eq!(rig.github.seen(|seen| seen.delivery_pages.len()), 5);
    assert_eq!(rig.github.seen(|seen| seen.redelivered.len()), 254);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_the_journal_has_is_not_asked_for() {
    let mut rig = Rig::new(config()).await;
    // The rig's first delivery is `d-1`.
    rig.accept(Decision::Ignore("a ping".to_owned())).await;
    rig.github.script.lock().unwrap().deliveries =
        vec![attempt(2, "d-1", 502, 60), attempt(1, "missed", 502, 60)];
    assert_eq!(rig.held(rig.runner.backfill()).await.unwrap(), 1);
    assert_eq!(rig.github.seen(|seen| seen.redelivered.clone()), [1]);
}

#[tokio::test(start_paused = true)]
async fn a_pass_cut_short_by_github_is_read_again_whole_and_a_failed_ask_is_made_again() {
    let rig = Rig::new(config()).await;
    rig.github.script.lock().unwrap().deliveries = failed(1..=150, 3600);
    rig.github.script.lock().unwrap().down = true;
    assert!(rig.held(rig.runner.backfill()).await.is_err());
    // Both pages read, then the first ask fails: the pass ends there.
    rig.github.script.lock().unwrap().down = false;
    rig.github.script.lock().unwrap().failing_redeliveries = 1;
    assert!(rig.held(rig.runner.backfill()).await.is_err());
    // Nothing is noted before GitHub takes the ask, so the next pass reads
    // both pages again and asks for all of them, the one that failed too.
    assert_eq!(rig.held(rig.runner.backfill()).await.unwrap(), 150);
    let mut redelivered = rig.github.seen(|seen| seen.redelivered.clone());
    redelivered.sort_unstable();
    assert_eq!(redelivered, (1..=150).collect::<Vec<u64>>(), "each once");
    let pages = rig.github.seen(|seen| seen.delivery_pages.clone());
    assert_eq!(pages, [None, Some("50".to_owned()), None, Some("50".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn a_cursor_that_does_not_move_ends_the_pass() {
    let rig = Rig::new(config()).await;
    rig.github.script.lock().unwrap().deliveries = failed(1..=250, 3600);
    rig.github.script.lock().unwrap().stuck_cursor = true;
    assert_eq!(rig.held(rig.runner.backfill()).await.unwrap(), 200);
    let pages = rig.github.seen(|seen| seen.delivery_pages.clone());
    assert_eq!(pages, [None, Some("150".to_owned())]);
    // Cut short, so the next pass reads the same pages again, not only the
    // first; what was asked for is not asked again.
    assert_eq!(rig.held(rig.runner.backfill()).await.unwrap(), 0);
    assert_eq!(rig.github.seen(|seen| seen.delivery_pages.len()), 4);
    assert_eq!(rig.github.seen(|seen| seen.redelivered.len()), 200);
}

#[tokio::test(start_paused = true)]
async fn a_delivery_github_will_not_redeliver_is_noted_and_the_pass_goes_on() {
    let rig = Rig::new(config()).await;
    rig.github.script.lock().unwrap().deliveries = failed(1..=150, 3600);
    rig.github.script.lock().unwrap().refused_redeliveries = vec![120];
    assert_eq!(rig.held(rig.runner.backfill()).await.unwrap(), 149, "every one but the refused one");
    assert!(rig.journal.redelivery_asked("guid-120").unwrap(), "noted, so not asked again");
    // A whole pass: the next reads one page, and asks for nothing.
    assert_eq!(rig.held(rig.runner.backfill()).await.unwrap(), 0);
    assert_eq!(rig.github.seen(|seen| seen.delivery_pages.len()), 3);
}
