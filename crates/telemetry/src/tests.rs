use std::time::Duration;

use super::*;

/// The sample lines of `text` (no comments), as `(series, value)`.
fn samples(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.rsplit_once(' ').expect("a sample line is `series value`"))
        .collect()
}

fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    samples(text).into_iter().find(|(name, _)| *name == series).map(|(_, value)| value)
}

#[test]
fn every_catalog_series_is_present_at_zero_before_any_event() {
    let text = Metrics::new().render();
    let all = samples(&text);
    assert!(all.iter().all(|(_, value)| value.parse::<f64>() == Ok(0.0)), "{text}");

    let mut wanted = vec![
        "berth_webhook_signature_failures_total".to_owned(),
        "berth_webhook_handling_seconds_count".to_owned(),
        "berth_http_connections".to_owned(),
        "berth_queue_depth".to_owned(),
        "berth_workers_running".to_owned(),
        "berth_dispatch_wait_seconds_count".to_owned(),
        "berth_oom_total".to_owned(),
        "berth_timeouts_total".to_owned(),
        "berth_cancels_total".to_owned(),
        "berth_reattached_total".to_owned(),
        "berth_collected_total".to_owned(),
        "berth_progress_updates_total".to_owned(),
    ];
    for event in WebhookEvent::ALL {
        for outcome in DeliveryOutcome::ALL {
            wanted.push(format!(
                "berth_webhook_deliveries_total{{event=\"{}\",outcome=\"{}\"}}",
                event.as_str(),
                outcome.as_str()
            ));
        }
    }
    for reason in DropReason::ALL {
        wanted.push(format!("berth_http_connections_dropped_total{{reason=\"{}\"}}", reason.as_str()));
    }
    for reason in RefusedReason::ALL {
        wanted.push(format!("berth_http_requests_refused_total{{reason=\"{}\"}}", reason.as_str()));
    }
    for kind in TaskKind::ALL {
        for conclusion in Conclusion::ALL {
            let labels = format!("kind=\"{}\",conclusion=\"{}\"", kind.as_str(), conclusion.as_str());
            wanted.push(format!("berth_tasks_finished_total{{{labels}}}"));
            wanted.push(format!("berth_task_duration_seconds_count{{{labels}}}"));
        }
    }
    for status in GitHubStatus::ALL {
        wanted.push(format!("berth_github_calls_total{{status=\"{}\"}}", status.as_str()));
    }
    for series in &wanted {
        assert_eq!(value(&text, series), Some("0"), "{series} in\n{text}");
    }
}

#[test]
fn counters_keep_their_total_names_and_types() {
    let text = Metrics::new().render();
    for (name, kind) in [
        ("berth_webhook_deliveries_total", "counter"),
        ("berth_github_calls_total", "counter"),
        ("berth_http_connections", "gauge"),
        ("berth_task_duration_seconds", "histogram"),
        ("berth_webhook_handling_seconds", "histogram"),
        ("berth_dispatch_wait_seconds", "histogram"),
    ] {
        assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} {kind} in\n{text}");
    }
    assert!(!text.contains("_total_total"), "{text}");
    assert!(!text.contains("# EOF"), "Prometheus text 0.0.4, not OpenMetrics: {text}");
}

#[test]
fn histograms_expose_their_buckets() {
    let metrics = Metrics::new();
    metrics.webhook_handled(Duration::from_millis(7));
    metrics.dispatch_wait(Duration::from_secs(3));
    metrics.task_duration(TaskKind::Review, Conclusion::Success, Duration::from_secs(90));
    let text = metrics.render();

    for (series, expected) in [
        ("berth_webhook_handling_seconds_bucket{le=\"0.005\"}", "0"),
        ("berth_webhook_handling_seconds_bucket{le=\"0.01\"}", "1"),
        ("berth_webhook_handling_seconds_bucket{le=\"+Inf\"}", "1"),
        ("berth_webhook_handling_seconds_count", "1"),
        ("berth_dispatch_wait_seconds_bucket{le=\"0.1\"}", "0"),
        ("berth_dispatch_wait_seconds_bucket{le=\"3.2\"}", "1"),
        ("berth_dispatch_wait_seconds_sum", "3.0"),
        ("berth_task_duration_seconds_bucket{kind=\"review\",conclusion=\"success\",le=\"60\"}", "0"),
        ("berth_task_duration_seconds_bucket{kind=\"review\",conclusion=\"success\",le=\"120\"}", "1"),
        ("berth_task_duration_seconds_bucket{kind=\"review\",conclusion=\"success\",le=\"3600\"}", "1"),
        ("berth_task_duration_seconds_count{kind=\"review\",conclusion=\"success\"}", "1"),
        ("berth_task_duration_seconds_count{kind=\"implement\",conclusion=\"success\"}", "0"),
    ] {
        assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
    }
}

#[test]
fn a_label_from_outside_maps_to_other() {
    assert_eq!(WebhookEvent::from_name("random_event_42"), WebhookEvent::Other);
    assert_eq!(WebhookEvent::from_name(""), WebhookEvent::Other);
    assert_eq!(WebhookEvent::from_name("pull_request"), WebhookEvent::PullRequest);
    assert_eq!(Conclusion::from_github("action_required"), Conclusion::Other);
    assert_eq!(TaskKind::from_name("refactor"), TaskKind::Other);
    assert_eq!(GitHubStatus::from_code(502), GitHubStatus::ServerError);
    assert_eq!(GitHubStatus::from_code(418), GitHubStatus::ClientError);
    assert_eq!(GitHubStatus::from_code(304), GitHubStatus::Other);

    let metrics = Metrics::new();
    let before = metrics.render().lines().count();
    for n in 0..100 {
        metrics.webhook_delivery(
            WebhookEvent::from_name(&format!("random_event_{n}")),
            DeliveryOutcome::Ignored,
        );
    }
    let text = metrics.render();
    assert_eq!(text.lines().count(), before, "no series grew:\n{text}");
    assert!(!text.contains("random_event_"), "{text}");
    assert_eq!(
        value(&text, "berth_webhook_deliveries_total{event=\"other\",outcome=\"ignored\"}"),
        Some("100"),
        "{text}"
    );
}

#[test]
fn typed_calls_land_on_their_series() {
    let metrics = Metrics::new();
    metrics.webhook_delivery(WebhookEvent::Ping, DeliveryOutcome::Queued);
    metrics.webhook_signature_failure();
    metrics.http_connections_open(3);
    metrics.http_connection_dropped(DropReason::Evicted);
    metrics.http_request_refused(RefusedReason::BodyTimeout);
    metrics.queue_depth(2);
    metrics.workers_running(1);
    metrics.task_finished(TaskKind::Implement, Conclusion::TimedOut);
    metrics.worker_oom();
    metrics.worker_timeout();
    metrics.task_cancelled();
    metrics.reconciled(4, 5);
    metrics.github_call(GitHubStatus::Success);
    let text = metrics.render();
    for (series, expected) in [
        ("berth_webhook_deliveries_total{event=\"ping\",outcome=\"queued\"}", "1"),
        ("berth_webhook_signature_failures_total", "1"),
        ("berth_http_connections", "3"),
        ("berth_http_connections_dropped_total{reason=\"evicted\"}", "1"),
        ("berth_http_requests_refused_total{reason=\"body_timeout\"}", "1"),
        ("berth_queue_depth", "2"),
        ("berth_workers_running", "1"),
        ("berth_tasks_finished_total{kind=\"implement\",conclusion=\"timed_out\"}", "1"),
        ("berth_oom_total", "1"),
        ("berth_timeouts_total", "1"),
        ("berth_cancels_total", "1"),
        ("berth_reattached_total", "4"),
        ("berth_collected_total", "5"),
        ("berth_github_calls_total{status=\"2xx\"}", "1"),
    ] {
        assert_eq!(value(&text, series), Some(expected), "{series} in\n{text}");
    }
}
