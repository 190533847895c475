"""flow's machine-learning jobs on Spark: the heavy step of `train`, `predict`, `drift` and
`experiment` when the task says `engine: spark` (see docs/ml.md).

flow builds this file into its binary and runs it with spark-submit (locally or as an EMR step):

    spark-submit flow_ml_job.py '<job as JSON>'

The job names its operator (`op`), its data (`{"path", "format"}`, paths as the cluster reads
them) and `result`, a folder where the job leaves one JSON line `{"result": "<JSON text>"}` for
flow to read back. Everything but the heavy step (statistics, the registry, artifacts) stays in
flow, so both engines give the same answers; the scorers and encoders here follow
operators/src/ml/model.rs exactly, and the e2e tests compare the two engines' numbers.

Needs PySpark 3.5 or later and numpy (MLlib needs it too; EMR has both).
"""

import json
import math
import sys

import numpy as np
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T


class JobError(Exception):
    """A mistake in the job's input, reported as one line."""


def read(spark, src):
    reader = spark.read
    if src["format"] == "csv":
        reader = reader.option("header", True).option("inferSchema", True)
    return reader.format(src["format"]).load(src["path"])


def clean(value):
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def write_result(spark, where, result):
    text = json.dumps(clean(result), allow_nan=False)
    df = spark.createDataFrame([(text,)], "result string")
    df.coalesce(1).write.mode("overwrite").json(where)


def is_numeric(data_type):
    return isinstance(data_type, (T.NumericType, T.BooleanType))


def need_columns(df, columns, what):
    for c in columns:
        if c not in df.columns:
            raise JobError(f"{what} has no column `{c}`")


# ---- experiment -------------------------------------------------------------------------------


def experiment(spark, job):
    """Per arm: units, and the sum and sum of squares of the unit values (the statistics need
    nothing else); the same query as the in-process operator."""
    assignments = read(spark, job["assignments"])
    outcomes = read(spark, job["outcomes"])
    need_columns(assignments, ["unit", "variant"], "experiment: assignments")
    need_columns(outcomes, ["unit", "value"], "experiment: outcomes")
    assignments.createOrReplaceTempView("assignments")
    outcomes.createOrReplaceTempView("outcomes")
    where = "WHERE experiment = :experiment" if "experiment" in assignments.columns else ""
    per_unit = "MAX" if job["metric"] == "conversion" else "SUM"
    query = f"""
        WITH a AS (SELECT DISTINCT CAST(unit AS STRING) AS unit, CAST(variant AS STRING) AS variant
                   FROM assignments {where}),
             o AS (SELECT CAST(unit AS STRING) AS unit, {per_unit}(CAST(value AS DOUBLE)) AS value
                   FROM outcomes GROUP BY CAST(unit AS STRING))
        SELECT a.variant AS variant, COUNT(*) AS units, SUM(COALESCE(o.value, 0D)) AS total,
               SUM(COALESCE(o.value, 0D) * COALESCE(o.value, 0D)) AS total_sq
        FROM a LEFT JOIN o ON a.unit = o.unit GROUP BY a.variant ORDER BY a.variant"""
    rows = spark.sql(query, args={"experiment": job["experiment"]}).collect()
    return {
        "arms": [
            {"variant": r["variant"], "units": r["units"], "sum": r["total"], "sum_sq": r["total_sq"]}
            for r in rows
            if r["variant"] is not None
        ]
    }


# ---- drift ------------------------------------------------------------------------------------


def order_statistics(values, positions):
    """The values at the given 0-based positions of the sorted column: a distributed sort, then
    only those rows."""
    wanted = sorted(set(positions))
    indexed = values.rdd.map(lambda r: r[0]).sortBy(lambda v: v).zipWithIndex()
    found = dict(indexed.filter(lambda vi: vi[1] in wanted).map(lambda vi: (vi[1], vi[0])).collect())
    return found


def cut_points(values, n, bins):
    """The reference's cut points, computed as drift.rs computes them (numpy's linear
    quantiles), from exact order statistics, so both engines bin every value alike."""
    spots = []
    for k in range(1, bins):
        pos = float(n - 1) * float(k) / float(bins)
        spots.append((pos, math.floor(pos), math.ceil(pos)))
    stats = order_statistics(values, [p for _, lo, hi in spots for p in (lo, hi)])
    return [stats[lo] + (stats[hi] - stats[lo]) * (pos - lo) for pos, lo, hi in spots]


def bin_counts(values, cuts):
    """How many values fall in each bin; a value equal to a cut point goes to the bin above."""
    index = sum((F.when(F.col("v") >= F.lit(c), 1).otherwise(0) for c in cuts), F.lit(0))
    counts = dict(values.groupBy(index.alias("bin")).count().collect())
    return [counts.get(b, 0) for b in range(len(cuts) + 1)]


def drift(spark, job):
    reference = read(spark, job["reference"])
    current = read(spark, job["current"])
    bins = job["bins"]
    features = job.get("features") or [
        f.name
        for f in reference.schema.fields
        if is_numeric(f.dataType)
        and f.name in current.columns
        and is_numeric(current.schema[f.name].dataType)
    ]
    if not features:
        raise JobError("drift: the reference and current sets share no numeric column")
    need_columns(reference, features, "drift: the reference set")
    need_columns(current, features, "drift: the current set")
    out = {}
    for f in features:
        def present(df):
            v = df.select(F.col(f).cast("double").alias("v"))
            return v.where(F.col("v").isNotNull() & ~F.isnan("v"))

        ref = present(reference).cache()
        cur = present(current)
        n = ref.count()
        if n == 0 or cur.limit(1).count() == 0:
            out[f] = None
            ref.unpersist()
            continue
        cuts = cut_points(ref, n, bins)
        out[f] = {"cuts": cuts, "reference": bin_counts(ref, cuts), "current": bin_counts(cur, cuts)}
        ref.unpersist()
    return {"features": features, "counts": out}


# ---- models: encoding and scoring, as operators/src/ml/model.rs ------------------------------


def encoding(model):
    """How rows become numbers: `native` (perpetual: NaN for missing, categories as indexes),
    `standardized` (logistic regression) or `imputed` (an ensemble trained by Spark)."""
    if model.get("ensemble") is not None:
        return "imputed"
    return "standardized" if model["algorithm"] == "logistic_regression" else "native"


def encode(model, columns):
    """Column-wise raw values (one list per feature) -> an (rows x width) float64 matrix."""
    how = encoding(model)
    out = []
    for f, col in zip(model["features"], columns):
        if f["kind"] == "numeric":
            x = np.array([np.nan if v is None else float(v) for v in col], dtype=np.float64)
            x[~np.isfinite(x)] = np.nan
            if how == "standardized":
                x = np.where(np.isnan(x), 0.0, (x - f["mean"]) / f["std"])
            elif how == "imputed":
                x = np.where(np.isnan(x), f["mean"], x)
            out.append(x)
        else:
            index = {c: i for i, c in enumerate(f["categories"])}
            idx = [None if v is None else index.get(str(v)) for v in col]
            if how == "standardized":
                for k in range(len(f["categories"])):
                    out.append(np.array([1.0 if i == k else 0.0 for i in idx], dtype=np.float64))
            elif how == "imputed":
                unseen = float(len(f["categories"]))
                out.append(np.array([unseen if i is None else float(i) for i in idx], dtype=np.float64))
            else:
                out.append(np.array([np.nan if i is None else float(i) for i in idx], dtype=np.float64))
    return np.column_stack(out) if out else np.zeros((0, 0))


class Tree:
    """One tree as flat arrays, walked for all rows at once."""

    def __init__(self, nodes, rule):
        size = max(n["id"] for n in nodes) + 1
        self.rule = rule  # "lt" (perpetual: x < split goes left) or "le" (Spark: x <= threshold)
        self.feature = np.zeros(size, dtype=np.int64)
        self.split = np.zeros(size, dtype=np.float64)
        self.left = np.zeros(size, dtype=np.int64)
        self.right = np.zeros(size, dtype=np.int64)
        self.missing = np.zeros(size, dtype=np.int64)
        self.leaf = np.ones(size, dtype=bool)
        self.value = np.zeros(size, dtype=np.float64)
        cats = {}
        for n in nodes:
            i = n["id"]
            self.value[i] = n["value"]
            self.leaf[i] = n["leaf"]
            if not n["leaf"]:
                self.feature[i] = n["feature"]
                self.split[i] = n["split"]
                self.left[i] = n["left"]
                self.right[i] = n["right"]
                self.missing[i] = n.get("missing", n["right"])
                if n.get("cats") is not None:
                    cats[i] = n["cats"]
        # Categorical splits as one table, row per node, column per category: category c goes
        # left when bit c of the node's bytes is set (a category past them goes right).
        self.is_cat = np.zeros(size, dtype=bool)
        self.cat_row = np.zeros(size, dtype=np.int64)
        bits = [np.unpackbits(np.frombuffer(b, dtype=np.uint8), bitorder="little") for b in cats.values()]
        self.cat_width = max((len(b) for b in bits), default=0)
        self.cat_table = np.zeros((len(bits), max(self.cat_width, 1)), dtype=bool)
        for row, (i, b) in enumerate(zip(cats, bits)):
            self.is_cat[i] = True
            self.cat_row[i] = row
            self.cat_table[row, : len(b)] = b.astype(bool)

    def values(self, x):
        node = np.zeros(x.shape[0], dtype=np.int64)
        while True:
            rows = np.nonzero(~self.leaf[node])[0]
            if rows.size == 0:
                return self.value[node]
            at = node[rows]
            v = x[rows, self.feature[at]]
            with np.errstate(invalid="ignore"):
                go_left = v < self.split[at] if self.rule == "lt" else v <= self.split[at]
            nxt = np.where(go_left, self.left[at], self.right[at])
            cat = self.is_cat[at]
            if cat.any():
                c = np.nan_to_num(v[cat], nan=0.0).astype(np.int64)
                known = c < self.cat_width
                inside = known & self.cat_table[self.cat_row[at[cat]], np.minimum(c, max(self.cat_width - 1, 0))]
                nxt[cat] = np.where(inside, self.left[at[cat]], self.right[at[cat]])
            gone = np.isnan(v)
            nxt[gone] = self.missing[at][gone]
            node[rows] = nxt


def perpetual_trees(booster):
    trees = []
    for t in booster["trees"]:
        nodes = []
        for key, n in t["nodes"].items():
            cats = n.get("left_cats")
            if isinstance(cats, str):
                cats = bytes.fromhex(cats)
            elif isinstance(cats, list):
                cats = bytes(cats)
            nodes.append(
                {
                    "id": int(key),
                    # perpetual keeps leaf weights as f32; sum them as it does, widened exactly.
                    "value": float(np.float32(n["weight_value"])),
                    "leaf": n["is_leaf"],
                    "feature": n["split_feature"],
                    "split": n["split_value"],
                    "left": n["left_child"],
                    "right": n["right_child"],
                    "missing": n["missing_node"],
                    "cats": cats,
                }
            )
        trees.append(Tree(nodes, "lt"))
    return trees


class Scorer:
    def __init__(self, model):
        self.model = model
        self.classification = model["task"] == "classification"
        if model.get("ensemble") is not None:
            e = model["ensemble"]
            self.kind = "trees"
            self.base = e["base"]
            self.trees = [Tree(t, "le") for t in e["trees"]]
        elif model["algorithm"] == "logistic_regression":
            self.kind = "linear"
            self.weights = model["weights"]
            self.intercept = model["intercept"]
        else:
            booster = model["booster"]
            self.kind = "trees"
            base = booster["base_score"]
            self.base = float("nan") if isinstance(base, str) else float(base)
            self.trees = perpetual_trees(booster)

    def predict(self, x):
        if self.kind == "linear":
            if len(self.weights) != x.shape[1]:
                raise JobError(f"the model has {len(self.weights)} weights for {x.shape[1]} columns")
            acc = np.zeros(x.shape[0])
            for c, w in enumerate(self.weights):
                acc += w * x[:, c]
            return 1.0 / (1.0 + np.exp(-(self.intercept + acc)))
        p = np.full(x.shape[0], self.base)
        for t in self.trees:
            p += t.values(x)
        return 1.0 / (1.0 + np.exp(-p)) if self.classification else p


def scored(shared, part):
    """(row, prediction) for each row of a partition whose rows are a carried column and then
    the model's features (`feature_select`), scored 8,192 rows at a time. `shared` is the model
    broadcast as data: a broadcast is unpickled with plain pickle, which cannot find a class
    defined in this script on the workers; the closures that call this (cloudpickled) can."""
    s = None
    batch = []
    for row in part:
        batch.append(row)
        if len(batch) == 8192:
            s = s or Scorer(shared.value)
            yield from score_batch(s, batch)
            batch = []
    if batch:
        s = s or Scorer(shared.value)
        yield from score_batch(s, batch)


def score_batch(s, batch):
    width = len(s.model["features"])
    predicted = s.predict(encode(s.model, [[r[1 + k] for r in batch] for k in range(width)]))
    return zip(batch, predicted)


def load_model(spark, url):
    text = spark.read.text(url, wholetext=True).first()[0]
    model = json.loads(text)
    if model.get("format") != "flow-model/1":
        raise JobError(f"predict: {url} is not a flow-model/1 artifact")
    return model


def feature_select(model, extra):
    cols = [F.col(c) for c in extra]
    for f in model["features"]:
        cast = "double" if f["kind"] == "numeric" else "string"
        cols.append(F.col(f["name"]).cast(cast).alias(f["name"]))
    return cols


def predict(spark, job):
    model = load_model(spark, job["model"])
    data = read(spark, job["input"])
    id_column = job["id_column"]
    need_columns(data, [id_column] + [f["name"] for f in model["features"]], "predict: the input")
    rows = data.select(*feature_select(model, [id_column]))
    id_type = data.schema[id_column].dataType
    version = job["version"]
    shared = spark.sparkContext.broadcast(model)

    def score(part):
        for r, p in scored(shared, part):
            yield (r[0], float(p), version)

    schema = T.StructType(
        [
            T.StructField(id_column, id_type, True),
            T.StructField("prediction", T.DoubleType(), True),
            T.StructField("model_version", T.LongType(), False),
        ]
    )
    predictions = spark.createDataFrame(rows.rdd.mapPartitions(score), schema)
    out = job["output"]
    writer = predictions.write.mode(out["mode"]).format(out["format"])
    if out["format"] == "csv":
        writer = writer.option("header", True)
    writer.save(out["path"])
    # Scoring keeps every row, so the input's count is the output's (read back, a csv output
    # would count its headers, and an appended one the earlier rows).
    return {"rows": rows.count()}


# ---- train ------------------------------------------------------------------------------------


def learn_features(df, names, kinds):
    """The encoding learnt from the training rows, as model.rs learns it."""
    features = []
    for name, kind in zip(names, kinds):
        if kind == "numeric":
            v = F.col(name).cast("double")
            ok = v.isNotNull() & ~F.isnan(v)
            row = df.agg(
                F.avg(F.when(ok, v)).alias("mean"),
                F.var_pop(F.when(ok, v)).alias("var"),
            ).first()
            mean = row["mean"] if row["mean"] is not None else 0.0
            var = row["var"] if row["var"] is not None else 0.0
            features.append({"name": name, "kind": "numeric", "mean": mean, "std": math.sqrt(var) if var > 0 else 1.0})
        else:
            cats = sorted(r[0] for r in df.select(F.col(name).cast("string")).where(F.col(name).isNotNull()).distinct().collect())
            features.append({"name": name, "kind": "categorical", "categories": cats})
    return features


def encoded_columns(features, how):
    """Spark expressions for the encoded columns, in model.rs's order."""
    cols = []
    for f in features:
        name = f["name"]
        if f["kind"] == "numeric":
            v = F.col(name).cast("double")
            missing = v.isNull() | F.isnan(v)
            if how == "standardized":
                cols.append(F.when(missing, F.lit(0.0)).otherwise((v - F.lit(f["mean"])) / F.lit(f["std"])))
            else:
                cols.append(F.when(missing, F.lit(f["mean"])).otherwise(v))
        else:
            v = F.col(name).cast("string")
            if how == "standardized":
                for c in f["categories"]:
                    cols.append(F.when(v == F.lit(c), F.lit(1.0)).otherwise(F.lit(0.0)))
            else:
                index = F.lit(float(len(f["categories"])))
                for i, c in reversed(list(enumerate(f["categories"]))):
                    index = F.when(v == F.lit(c), F.lit(float(i))).otherwise(index)
                cols.append(index)
    return cols


def spark_tree(java_node, weight, ids):
    """A fitted MLlib tree (through its JVM object) as flow's ensemble nodes."""
    nodes = []

    def walk(n):
        i = len(ids)
        ids.append(i)
        if n.getClass().getSimpleName() == "LeafNode":
            nodes.append({"id": i, "leaf": True, "value": weight * n.prediction()})
            return i
        split = n.split()
        if split.getClass().getSimpleName() != "ContinuousSplit":
            raise JobError("train: an MLlib tree has a categorical split; flow declares no categorical features")
        node = {"id": i, "leaf": False, "value": 0.0, "feature": split.featureIndex(), "split": split.threshold()}
        nodes.append(node)
        node["left"] = walk(n.leftChild())
        node["right"] = walk(n.rightChild())
        return i

    walk(java_node)
    return nodes


def train(spark, job):
    from pyspark.ml.classification import GBTClassifier, LogisticRegression
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import GBTRegressor

    data = read(spark, job["training_set"])
    label = job["label"]
    need_columns(data, [label], "train: the training set (label)")
    names = job.get("features") or [c for c in data.columns if c not in (label, job.get("id_column"))]
    if not names:
        raise JobError("train: no feature columns")
    need_columns(data, names, "train: the training set")
    kinds = ["categorical" if isinstance(data.schema[n].dataType, T.StringType) else "numeric" for n in names]
    classification = job["task"] == "classification"
    rows = data.where(F.col(label).isNotNull()).withColumn("__label", F.col(label).cast("double"))
    if classification:
        bad = rows.where(~F.col("__label").isin(0.0, 1.0)).select("__label").limit(1).collect()
        if bad:
            raise JobError(f"train: a classification label must be 0 or 1 (or a boolean); `{label}` has {bad[0][0]}")
        for only in (0.0, 1.0):
            if rows.where(F.col("__label") != only).limit(1).count() == 0:
                raise JobError(f"train: every label is {int(only)}; a classifier needs both classes")
    split = job["validation_split"]
    if split > 0:
        fit_rows, held_rows = rows.randomSplit([1.0 - split, split], seed=job["seed"])
    else:
        fit_rows, held_rows = rows, rows
    fit_rows = fit_rows.cache()
    n_fit = fit_rows.count()
    if n_fit < 2:
        raise JobError(f"train: {n_fit} labelled training rows; at least 2 are needed")
    features = learn_features(fit_rows, names, kinds)
    algorithm = job["algorithm"]
    how = "standardized" if algorithm == "logistic_regression" else "imputed"
    encoded = encoded_columns(features, how)
    names_enc = [f"__x{i}" for i in range(len(encoded))]

    def assemble(df):
        df = df.select(F.col("__label"), *[c.alias(n) for c, n in zip(encoded, names_enc)])
        return VectorAssembler(inputCols=names_enc, outputCol="__features").transform(df)

    model = {"format": "flow-model/1", "task": job["task"], "algorithm": algorithm, "label": label, "features": features}
    if algorithm == "logistic_regression":
        # linfa's objective is the summed log loss plus alpha/2 |w|^2; MLlib's is the mean, so
        # its regParam is alpha per row.
        fitted = LogisticRegression(
            featuresCol="__features",
            labelCol="__label",
            maxIter=job["max_iterations"],
            regParam=job["alpha"] / n_fit,
            elasticNetParam=0.0,
            standardization=False,
            family="binomial",
        ).fit(assemble(fit_rows))
        model["weights"] = [float(w) for w in fitted.coefficients.toArray()]
        model["intercept"] = float(fitted.intercept)
    else:
        params = dict(featuresCol="__features", labelCol="__label", maxIter=job["max_iterations"], maxDepth=job["max_depth"], seed=job["seed"])
        fitted = (GBTClassifier(**params) if classification else GBTRegressor(**params)).fit(assemble(fit_rows))
        # MLlib's classifier gives P(1) = sigmoid(2 * margin): the 2 goes into the leaves.
        scale = 2.0 if classification else 1.0
        trees = []
        for tree, weight in zip(fitted.trees, fitted.treeWeights):
            trees.append(spark_tree(tree._java_obj.rootNode(), scale * weight, []))
        model["ensemble"] = {"base": 0.0, "trees": trees, "trainer": f"spark-mllib {spark.version}"}

    # The metrics on the held-out rows, scored by this file's scorer (the one `predict` uses).
    shared = spark.sparkContext.broadcast(model)

    def score(part):
        for r, p in scored(shared, part):
            yield (float(r[0]), float(p))

    held = held_rows.select(F.col("__label"), *feature_select(model, []))
    pairs = spark.createDataFrame(held.rdd.mapPartitions(score), "y double, p double")
    metrics = measure(pairs, classification)
    n_held = held_rows.count() if split > 0 else 0
    fit_rows.unpersist()
    return {"model": model, "metrics": metrics, "rows": {"train": n_fit, "validation": n_held}}


def measure(pairs, classification):
    if not classification:
        row = pairs.agg(
            F.sqrt(F.avg((F.col("p") - F.col("y")) ** 2)).alias("rmse"),
            F.avg(F.abs(F.col("p") - F.col("y"))).alias("mae"),
        ).first()
        return {"rmse": row["rmse"], "mae": row["mae"]}
    eps = 1e-15
    p = F.least(F.greatest(F.col("p"), F.lit(eps)), F.lit(1.0 - eps))
    row = pairs.agg(
        F.avg(F.when((F.col("p") >= 0.5) == (F.col("y") > 0.5), 1.0).otherwise(0.0)).alias("accuracy"),
        F.avg(-(F.col("y") * F.log(p) + (1.0 - F.col("y")) * F.log(1.0 - p))).alias("log_loss"),
    ).first()
    return {"auc": auc(pairs), "accuracy": row["accuracy"], "log_loss": row["log_loss"]}


def auc(pairs):
    """ROC AUC with ties counted half (the Mann-Whitney statistic), or None with one class."""
    ranked = pairs.groupBy("p").agg(
        F.sum(F.when(F.col("y") > 0.5, 1).otherwise(0)).alias("pos"),
        F.sum(F.when(F.col("y") > 0.5, 0).otherwise(1)).alias("neg"),
    )
    rows = ranked.orderBy("p").collect()
    pos = sum(r["pos"] for r in rows)
    neg = sum(r["neg"] for r in rows)
    if pos == 0 or neg == 0:
        return None
    below = 0
    wins = 0.0
    for r in rows:
        wins += r["pos"] * (below + 0.5 * r["neg"])
        below += r["neg"]
    return wins / (pos * neg)


JOBS = {"experiment": experiment, "drift": drift, "predict": predict, "train": train}


def main():
    job = json.loads(sys.argv[1])
    spark = SparkSession.builder.appName(f"flow {job['op']}").getOrCreate()
    try:
        result = JOBS[job["op"]](spark, job)
    except JobError as e:
        print(f"flow: {e}", file=sys.stderr)
        spark.stop()
        sys.exit(3)
    write_result(spark, job["result"], result)
    spark.stop()


if __name__ == "__main__":
    main()
