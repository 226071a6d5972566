//! The SDK's gateway client against a real gateway (the `qmtl-gateway` library serving on
//! a free port of 127.0.0.1, store in memory): each refusal a dryrun can meet becomes a
//! clear `RunError` with the right exit class — 401 without the token, 409 naming the
//! active strategy with the same DAG, 422 with the gateway's own words and field, and
//! an unreachable URL named in the message — and a run that registered ends its
//! registration.

mod support;

use qmtl::gateway_client::{GatewayClient, GatewayError, RunType};
use qmtl::strategies::{MomentumStrategy, SampleStrategy};
use qmtl::{Dag, DagBuilder, DagError, Node, NodeRef, Row, RunError, Runner, StreamInput};

use support::{bundled_csv, pg, scratch, serve_gateway};

/// A momentum dryrun over the bundled file that stops once its warm-up is done.
fn dryrun(url: &str) -> Runner {
    let cancel = tokio_util::sync::CancellationToken::new();
    cancel.cancel();
    Runner::dryrun(MomentumStrategy::default())
        .gateway_url(url)
        .backfill_source(bundled_csv())
        .backfill_start(1_492_592_400)
        .backfill_end(1_500_000_000)
        .cancel_token(cancel)
}

fn gateway_error(result: Result<qmtl::Report, RunError>) -> (GatewayError, bool) {
    match result {
        Err(RunError::Gateway(e)) => {
            let usage = e.is_usage();
            (e, usage)
        }
        Err(other) => panic!("expected a gateway error, got {other}"),
        Ok(_) => panic!("expected a gateway error, the run succeeded"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_token_is_a_401_usage_error_and_the_right_token_registers() {
    let (gateway, url) = serve_gateway(Some("s3cret-tok")).await;
    let (err, usage) = gateway_error(dryrun(&url).run().await);
    assert!(matches!(err, GatewayError::Unauthorized { .. }), "{err}");
    assert!(usage);
    let text = err.to_string();
    assert!(text.contains("401") && text.contains(&url), "{text}");
    assert!(text.contains("QMTL_GATEWAY_TOKEN"), "{text}");

    let report = dryrun(&url)
        .gateway_token(Some("s3cret-tok".into()))
        .run()
        .await
        .expect("the run registers with the token");
    let id = report
        .live
        .strategy_id
        .expect("the report names the strategy");
    let client = GatewayClient::new(&url)
        .unwrap()
        .token(Some("s3cret-tok".into()));
    // The run ended its registration, so the same DAG registers again without a 409.
    let again = client
        .register(
            &Dag::build(&MomentumStrategy::default()).unwrap(),
            RunType::DryRun,
        )
        .await
        .expect("the ended strategy no longer conflicts");
    assert_ne!(again.strategy_id, id);
    gateway.shutdown_handle().shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_dag_twice_is_a_409_naming_the_active_strategy() {
    let (gateway, url) = serve_gateway(None).await;
    let client = GatewayClient::new(&url).unwrap();
    let dag = Dag::build(&MomentumStrategy::default()).unwrap();
    let first = client.register(&dag, RunType::Live).await.unwrap();
    assert!(first.queue_map.is_empty());

    let (err, usage) = gateway_error(dryrun(&url).run().await);
    match &err {
        GatewayError::Conflict { strategy_id, .. } => assert_eq!(strategy_id, &first.strategy_id),
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(usage);
    assert!(err.to_string().contains(&first.strategy_id), "{err}");

    // A strategy sharing bars and sma_fast is told where they are computed.
    let wide = Dag::build(&MomentumStrategy { fast: 10, slow: 50 }).unwrap();
    let second = client.register(&wide, RunType::DryRun).await.unwrap();
    for shared in ["bars", "sma_fast"] {
        let id = &wide.by_name(shared).unwrap().id;
        assert_eq!(
            second.queue_map.get(id),
            Some(&qmtl::gateway_client::QueueTarget::Queue(id.to_string())),
            "{shared}"
        );
    }
    assert!(!second
        .queue_map
        .contains_key(&wide.by_name("sma_slow").unwrap().id));
    client.end(&first.strategy_id).await.unwrap();
    client.end(&second.strategy_id).await.unwrap();
    gateway.shutdown_handle().shutdown();
}

/// A strategy the SDK builds but the gateway refuses: a stream name holding a NUL.
struct NulName;

impl qmtl::Strategy for NulName {
    fn setup(&self, dag: &mut DagBuilder) -> Result<NodeRef, DagError> {
        let s = dag.stream_input(
            StreamInput::new("pri\0ce")
                .interval(1)
                .period(1)
                .fields(["close"]),
        )?;
        dag.node(
            Node::new("out")
                .input(&s)
                .fields(["value"])
                .compute("id@1", |v| Some(Row::one(v.input(0).latest()?.value(0)))),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_422_surfaces_the_gateways_detail_and_field() {
    let (gateway, url) = serve_gateway(None).await;
    let runner = Runner::dryrun(NulName)
        .gateway_url(&url)
        .backfill_source(bundled_csv());
    let (err, usage) = gateway_error(runner.run().await);
    let GatewayError::Rejected { status, field, .. } = &err else {
        panic!("expected a rejection, got {err}");
    };
    assert_eq!(*status, 422);
    assert_eq!(field.as_deref(), Some("dag_json.nodes[0].name"));
    assert!(usage);
    assert!(
        err.to_string().contains("at field dag_json.nodes[0].name"),
        "{err}"
    );
    gateway.shutdown_handle().shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_gateway_names_its_url_and_is_a_runtime_error() {
    let url = format!("http://127.0.0.1:{}", pg::closed_port());
    let (err, usage) = gateway_error(dryrun(&url).run().await);
    assert!(
        matches!(err, GatewayError::Unreachable { attempts: 4, .. }),
        "{err}"
    );
    assert!(!usage);
    assert!(err.to_string().contains(&url), "{err}");
    let sample = Runner::dryrun(SampleStrategy)
        .gateway_url("https://127.0.0.1:1")
        .backfill_source(bundled_csv());
    let (err, usage) = gateway_error(sample.run().await);
    assert!(matches!(err, GatewayError::BadUrl { .. }) && usage, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_continue_after_the_warm_up_without_repeating_a_bucket() {
    let (gateway, url) = serve_gateway(None).await;
    let csv = scratch("price.csv");
    let rows: String = (1_700_000_000..1_700_000_010)
        .map(|t| format!("{t},{}\n", t - 1_700_000_000))
        .collect();
    std::fs::write(&csv, format!("ts,value\n{rows}")).unwrap();
    let lines = scratch("live.jsonl");
    std::fs::write(
        &lines,
        concat!(
            "{\"stream\":\"price\",\"ts\":1700000009,\"value\":99}\n",
            "\n",
            "{\"stream\":\"price\",\"ts\":1700000010,\"value\":10}\n",
            "{\"stream\":\"price\",\"ts\":1700000011,\"value\":11}\n",
        ),
    )
    .unwrap();
    let report = Runner::dryrun(SampleStrategy)
        .gateway_url(&url)
        .backfill_source(format!("csv:{}", csv.display()))
        .backfill_start(1_700_000_000)
        .backfill_end(1_700_000_010)
        .live_source(qmtl::live::LiveSpec::Jsonl(lines.clone()))
        .poll_interval(std::time::Duration::from_millis(50))
        .run()
        .await
        .expect("the run ends with its input");
    assert_eq!(report.events, 10);
    assert_eq!(report.live.live_events, 2);
    assert_eq!(
        report.live.live_duplicates, 1,
        "the replayed bucket is not computed again"
    );
    assert_eq!(report.live.live_outputs, 2);
    let out = report.node("out").unwrap();
    assert_eq!((out.outputs, out.last_ts), (12, Some(1_700_000_011)));

    std::fs::write(&lines, "{\"stream\":\"price\",\"ts\":1700000010}\n").unwrap();
    let err = Runner::dryrun(SampleStrategy)
        .gateway_url(&url)
        .backfill_source(format!("csv:{}", csv.display()))
        .backfill_start(1_700_000_000)
        .backfill_end(1_700_000_010)
        .live_source(qmtl::live::LiveSpec::Jsonl(lines))
        .run()
        .await
        .unwrap_err();
    assert!(err.is_usage(), "{err}");
    assert!(
        err.to_string()
            .contains("line 1: stream 'price' needs a number for field 'value'"),
        "{err}"
    );
    gateway.shutdown_handle().shutdown();
}
