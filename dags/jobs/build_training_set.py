"""The training set of build_training_set.yaml as a PySpark job, for `engine: spark` (local Spark,
or EMR with `spark_target: emr`): the same point-in-time features as the `sql` task, the same
columns, written as parquet.

    spark-submit build_training_set.py DATA_FOLDER OUTPUT_FOLDER
"""
import sys

from pyspark.sql import SparkSession, functions as F

data, out = sys.argv[1].rstrip("/"), sys.argv[2]
# Label dates are UTC days, as in the sql task.
spark = (
    SparkSession.builder.appName("build_training_set")
    .config("spark.sql.session.timeZone", "UTC")
    .getOrCreate()
)
events = spark.read.parquet(data + "/events/")
profiles = spark.read.parquet(data + "/profiles.parquet")
labels = spark.read.parquet(data + "/labels.parquet")

label_ts = F.col("l.label_date").cast("timestamp")
window = (
    (F.col("e.user_id") == F.col("l.user_id"))
    & (F.col("e.ts") < label_ts)
    & (F.col("e.ts") >= label_ts - F.expr("INTERVAL 30 DAYS"))
)
count_of = lambda kind: F.coalesce(F.sum(F.when(F.col("e.event_type") == kind, 1).otherwise(0)), F.lit(0))
(
    labels.alias("l")
    .join(profiles.alias("p"), F.col("p.user_id") == F.col("l.user_id"))
    .join(events.alias("e"), window, "left")
    .groupBy("l.user_id", "p.age", "p.country", "p.plan", "l.unsubscribed")
    .agg(
        F.count("e.user_id").alias("events_30d"),
        count_of("purchase").alias("purchases_30d"),
        count_of("email_open").alias("opens_30d"),
        count_of("click").alias("clicks_30d"),
        F.coalesce(F.sum("e.amount"), F.lit(0.0)).alias("revenue_30d"),
    )
    .select("user_id", "age", "country", "plan", "events_30d", "purchases_30d", "opens_30d",
            "clicks_30d", "revenue_30d", "unsubscribed")
    .write.mode("overwrite")
    .parquet(out)
)
spark.stop()
