//! `produces:` and `schedule: { datasets: [...] }`: what parsing keeps, and each problem.

use super::*;

const PRODUCER: &str = "\
id: producer
tasks:
  build:
    operator: shell
    command: echo
    produces: [s3://lake/training_set/, 'warehouse://analytics.features']
";

const CONSUMER: &str = "\
id: consumer
schedule:
  datasets:
    - s3://lake/training_set/
    - { uri: 'http://partner/feed', external: true }
  mode: all
tasks:
  train:
    operator: shell
    command: echo
    env: { EVENTS: '{{ triggering_events | tojson }}' }
  report: { operator: shell, command: echo done, depends_on: [train] }
";

#[test]
fn producers_and_dataset_schedules_are_kept() {
    let producer = parse(PRODUCER).unwrap_or_else(|p| panic!("{}", render(&p)));
    assert_eq!(
        producer.task("build").unwrap().produces,
        ["s3://lake/training_set/", "warehouse://analytics.features"]
    );
    let consumer = parse(CONSUMER).unwrap_or_else(|p| panic!("{}", render(&p)));
    let schedule = consumer.datasets.as_ref().expect("scheduled on datasets");
    assert_eq!(schedule.mode, DatasetMode::All);
    assert_eq!(
        schedule.uris(),
        ["s3://lake/training_set/", "http://partner/feed"]
    );
    assert_eq!(
        schedule
            .datasets
            .iter()
            .map(|d| d.external)
            .collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(schedule.datasets[0].pos, Pos::new(4, 7));
    assert!(consumer.schedule.is_none(), "no cron: no start_date needed");
    assert!(consumer.task("train").unwrap().reads_triggering_events);
    assert!(!consumer.task("report").unwrap().reads_triggering_events);
    assert_eq!(
        consumer.schedule_display().as_deref(),
        Some("datasets (all): s3://lake/training_set/, http://partner/feed")
    );
    // Every consumed dataset is produced (or external): nothing to report.
    assert!(unproduced_datasets(&[producer.clone(), consumer.clone()]).is_empty());
    let alone = unproduced_datasets(&[consumer]);
    assert_eq!(alone.len(), 1, "{alone:?}");
    assert_eq!(alone[0].pos, Pos::new(4, 7));
    assert!(
        alone[0]
            .message
            .contains("'s3://lake/training_set/', which no task produces")
    );
}

#[test]
fn a_cron_beside_datasets_needs_a_start_date() {
    let text = "id: both\nschedule: { cron: '@daily', datasets: [s3://a/b] }\ntasks:\n  t: { operator: shell, command: echo }\n";
    assert_eq!(
        problems(text),
        ["2:11: a DAG with a schedule needs a 'start_date'"]
    );
    let dated = text.replace("tasks:", "start_date: 2026-01-01\ntasks:");
    let dag = parse(&dated).unwrap_or_else(|p| panic!("{}", render(&p)));
    assert!(dag.schedule.is_some() && dag.datasets.is_some());
    assert_eq!(
        dag.schedule_display().as_deref(),
        Some("@daily or datasets (any): s3://a/b")
    );
}

#[test]
fn bad_dataset_keys_are_reported_where_written() {
    let text = "\
id: bad
schedule:
  datasets: ['s3://{{ ds }}/x', no-scheme, s3://a/b, s3://a/b]
  mode: some
  when: never
params:
  p: { type: string }
tasks:
  t:
    operator: shell
    command: echo
    produces: ['s3://a b']
    when: '{{ triggering_events | length > 0 }}'
";
    let got = problems(text);
    let expect = [
        "3:14: dataset URI 's3://{{ ds }}/x' is a template",
        "3:33: dataset URI 'no-scheme' must be scheme://path",
        "3:54: dataset 's3://a/b' is listed twice",
        "4:9: unknown mode 'some' (expected any or all)",
        "5:3: unknown key 'when' in 'schedule'",
        "7:3: param 'p' has no default, but the DAG has a schedule",
        "12:16: dataset URI 's3://a b' must be scheme://path",
        "13:11: in 'when' of task 't': 'triggering_events' is available in the operator's keys",
    ];
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    for (g, e) in got.iter().zip(expect) {
        assert!(g.starts_with(e), "{got:#?}\n{g}\n  should start with\n{e}");
    }
    let empty =
        "id: e\nschedule: { datasets: [] }\ntasks:\n  t: { operator: shell, command: echo }\n";
    assert_eq!(
        problems(empty),
        ["2:23: 'datasets' is empty: name at least one dataset URI"]
    );
}

#[test]
fn triggering_events_are_outside_values_in_shell_keys() {
    let text = "\
id: c
schedule: { datasets: [s3://a/b] }
tasks:
  t: { operator: shell, command: 'echo {{ triggering_events[0].extra.path }}' }
";
    let got = problems(text);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].contains("shell_quote"), "{got:#?}");
    let quoted = text.replace("extra.path }}", "extra.path | shell_quote }}");
    assert_eq!(problems(&quoted), Vec::<String>::new());
}
