#!/usr/bin/env python3
"""A small AWS EMR emulator for the test bed (scripts/testbed.sh).

moto's EMR never moves a step past RUNNING and has no CancelSteps, so the `spark` operator's
`target: emr` is tested against this server instead. It speaks the EMR API's wire protocol
(AWS JSON 1.1: `POST /`, `X-Amz-Target: ElasticMapReduce.<Operation>`, SigV4 ignored) and
really runs each step: a `command-runner.jar` step whose args start with `spark-submit` runs
`$SPARK_HOME/bin/spark-submit --master local[2]` on this machine, in its own process group.
Steps go PENDING -> RUNNING -> COMPLETED / FAILED / CANCELLED, one at a time per cluster (EMR's
default step concurrency), and each step's stdout and stderr are uploaded gzipped to the
cluster's LogUri on the S3 endpoint (moto's server) as `{LogUri}{cluster}/steps/{step}/`, where
real EMR puts them.

Operations: RunJobFlow, DescribeCluster, ListClusters, AddJobFlowSteps, DescribeStep,
ListSteps, CancelSteps, TerminateJobFlows. Routes for tests (not AWS):
  GET  /emr-api/        health check, {"ok": true}
  GET  /emr-api/steps   every step ever submitted: [{cluster_id, step_id, name, state, args}]
  POST /emr-api/reset   kill every step and forget all clusters

    emr_emulator.py --host 127.0.0.1 --port P --s3-endpoint URL [--startup-seconds 1]

Needs boto3 only for the log upload and the script download (the moto venv has it).
"""

import argparse
import gzip
import json
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Cluster states that accept no more steps and never run one again.
ENDING = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
STEP_DONE = ("COMPLETED", "FAILED", "CANCELLED", "INTERRUPTED")
# Grace between SIGTERM and SIGKILL when a running step is cancelled.
KILL_GRACE_SECONDS = 5.0
# ListSteps and ListClusters pages, as EMR pages them.
PAGE = 50


def log(msg):
    print(f"emr: {msg}", file=sys.stderr, flush=True)


def now():
    # awsJson1_1 timestamps are epoch seconds as JSON numbers.
    return round(time.time(), 3)


def new_id(prefix):
    return prefix + "".join(random.choices(string.ascii_uppercase + string.digits, k=13))


class ApiError(Exception):
    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind
        self.message = message


def bad(message):
    return ApiError("InvalidRequestException", message)


def parse_s3(url):
    """(bucket, key) of an s3:// (or s3n://, s3a://) URL."""
    m = re.match(r"^s3[an]?://([^/]+)/?(.*)$", url)
    if not m:
        raise ValueError(f"not an S3 URL: {url}")
    return m.group(1), m.group(2)


def kill_group(pid, sig):
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Step:
    def __init__(self, cluster, spec):
        jar_step = spec.get("HadoopJarStep")
        if not isinstance(jar_step, dict) or not isinstance(jar_step.get("Jar"), str):
            raise bad("Step.HadoopJarStep.Jar is required")
        if not isinstance(spec.get("Name"), str) or not spec["Name"]:
            raise bad("Step.Name is required")
        args = jar_step.get("Args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise bad("Step.HadoopJarStep.Args must be a list of strings")
        action = spec.get("ActionOnFailure") or "CONTINUE"
        if action not in ("TERMINATE_JOB_FLOW", "TERMINATE_CLUSTER", "CANCEL_AND_WAIT", "CONTINUE"):
            raise bad(f"Step.ActionOnFailure `{action}` is not valid")
        self.cluster = cluster
        self.id = new_id("s-")
        self.name = spec["Name"]
        self.jar = jar_step["Jar"]
        self.main_class = jar_step.get("MainClass")
        self.args = list(args)
        self.properties = {
            p.get("Key", ""): p.get("Value", "") for p in (jar_step.get("Properties") or [])
        }
        self.action_on_failure = action
        self.state = "PENDING"
        self.failure = None  # FailureDetails once FAILED
        self.created = now()
        self.started = None
        self.ended = None
        # Set by CancelSteps / TerminateJobFlows while RUNNING; the step's thread acts on it.
        self.kill_signal = None
        self.proc = None

    def config(self):
        out = {"Jar": self.jar, "Properties": dict(self.properties), "Args": list(self.args)}
        if self.main_class:
            out["MainClass"] = self.main_class
        return out

    def status(self):
        timeline = {"CreationDateTime": self.created}
        if self.started is not None:
            timeline["StartDateTime"] = self.started
        if self.ended is not None:
            timeline["EndDateTime"] = self.ended
        out = {"State": self.state, "StateChangeReason": {}, "Timeline": timeline}
        if self.failure is not None:
            out["FailureDetails"] = dict(self.failure)
        return out

    def describe(self):
        return {
            "Id": self.id,
            "Name": self.name,
            "Config": self.config(),
            "ActionOnFailure": self.action_on_failure,
            "Status": self.status(),
        }


class Cluster:
    def __init__(self, req, region):
        if not isinstance(req.get("Name"), str) or not req["Name"]:
            raise bad("Name is required")
        instances = req.get("Instances")
        if not isinstance(instances, dict):
            raise bad("Instances is required")
        self.id = new_id("j-")
        self.arn = f"arn:aws:elasticmapreduce:{region}:123456789012:cluster/{self.id}"
        self.name = req["Name"]
        self.release_label = req.get("ReleaseLabel") or "emr-7.0.0"
        self.log_uri = req.get("LogUri")
        self.keep_alive = bool(instances.get("KeepJobFlowAliveWhenNoSteps", False))
        self.termination_protected = bool(instances.get("TerminationProtected", False))
        self.instances = instances
        self.applications = [
            {"Name": a["Name"]} for a in (req.get("Applications") or []) if a.get("Name")
        ]
        self.service_role = req.get("ServiceRole")
        self.job_flow_role = req.get("JobFlowRole")
        self.tags = [t for t in (req.get("Tags") or []) if isinstance(t, dict)]
        self.state = "STARTING"
        self.reason = {}
        self.created = now()
        self.ready = None
        self.ended = None
        self.steps = []  # in submission order
        self.running = None  # the step being run
        self.end_state = "TERMINATED"  # or TERMINATED_WITH_ERRORS after a TERMINATE_CLUSTER step

    def status(self):
        timeline = {"CreationDateTime": self.created}
        if self.ready is not None:
            timeline["ReadyDateTime"] = self.ready
        if self.ended is not None:
            timeline["EndDateTime"] = self.ended
        return {"State": self.state, "StateChangeReason": dict(self.reason), "Timeline": timeline}

    def describe(self):
        out = {
            "Id": self.id,
            "Name": self.name,
            "Status": self.status(),
            "Ec2InstanceAttributes": {"Ec2AvailabilityZone": "us-east-1a"},
            "InstanceCollectionType": "INSTANCE_GROUP",
            "ReleaseLabel": self.release_label,
            "AutoTerminate": not self.keep_alive,
            "TerminationProtected": self.termination_protected,
            "VisibleToAllUsers": True,
            "Applications": self.applications,
            "Tags": self.tags,
            "NormalizedInstanceHours": 0,
            "ClusterArn": self.arn,
            "StepConcurrencyLevel": 1,
        }
        if self.log_uri:
            out["LogUri"] = self.log_uri
        if self.service_role:
            out["ServiceRole"] = self.service_role
        if self.job_flow_role:
            out["Ec2InstanceAttributes"]["IamInstanceProfile"] = self.job_flow_role
        if self.ready is not None and self.state not in ENDING:
            out["MasterPublicDnsName"] = "localhost"
        return out


class Emulator:
    def __init__(self, s3_endpoint, spark_home, startup_seconds, termination_seconds):
        self.s3_endpoint = s3_endpoint
        self.spark_home = spark_home
        self.startup_seconds = startup_seconds
        self.termination_seconds = termination_seconds
        self.lock = threading.RLock()
        self.clusters = {}  # id -> Cluster, in creation order
        self.all_steps = []  # every step, in submission order
        self.work = tempfile.mkdtemp(prefix="emr-emulator-")
        self._s3 = None
        self._s3_lock = threading.Lock()  # not self.lock: making a boto3 client takes a while

    # ---- S3 -------------------------------------------------------------------------------

    def s3(self):
        with self._s3_lock:
            if self._s3 is None:
                import boto3
                from botocore.config import Config

                self._s3 = boto3.client(
                    "s3",
                    endpoint_url=self.s3_endpoint,
                    region_name="us-east-1",
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                    config=Config(
                        s3={"addressing_style": "path"},
                        retries={"max_attempts": 2},
                        connect_timeout=5,
                        read_timeout=30,
                    ),
                )
            return self._s3

    # ---- the state machine (callers hold self.lock) -----------------------------------------

    def live(self, cluster):
        """False once the cluster was forgotten by a reset (its threads then drop their work)."""
        return self.clusters.get(cluster.id) is cluster

    def cluster(self, cluster_id):
        if not isinstance(cluster_id, str) or cluster_id not in self.clusters:
            raise bad(f"Cluster id '{cluster_id}' is not valid.")
        return self.clusters[cluster_id]

    def later(self, seconds, fn, *args):
        t = threading.Timer(seconds, self._locked, (fn,) + args)
        t.daemon = True
        t.start()

    def _locked(self, fn, *args):
        with self.lock:
            fn(*args)

    def became_ready(self, cluster):
        if not self.live(cluster) or cluster.state != "STARTING":
            return
        cluster.ready = now()
        cluster.state = "WAITING"
        cluster.reason = {"Message": "Cluster ready to run steps."}
        self.kick(cluster)

    def kick(self, cluster):
        """Start the next pending step when the cluster is idle, or end the cluster."""
        if not self.live(cluster) or cluster.running is not None:
            return
        if cluster.state == "TERMINATING":
            self.later(self.termination_seconds, self.terminated, cluster)
            return
        if cluster.state not in ("WAITING", "RUNNING"):
            return
        step = next((s for s in cluster.steps if s.state == "PENDING"), None)
        if step is not None:
            step.state = "RUNNING"
            step.started = now()
            cluster.running = step
            cluster.state = "RUNNING"
            cluster.reason = {"Message": "Running step"}
            threading.Thread(target=self.run_step, args=(cluster, step), daemon=True).start()
            return
        if cluster.state == "RUNNING":
            cluster.state = "WAITING"
            cluster.reason = {"Message": "Cluster ready after last step completed."}
        if not cluster.keep_alive and cluster.steps:
            self.terminate(cluster, "ALL_STEPS_COMPLETED", "Steps completed")

    def terminate(self, cluster, code, message):
        if cluster.state in ENDING:
            return
        log(f"{cluster.id} terminating: {message}")
        cluster.state = "TERMINATING"
        cluster.reason = {"Code": code, "Message": message}
        for step in cluster.steps:
            if step.state == "PENDING":
                step.state = "CANCELLED"
                step.ended = now()
            elif step.state in ("RUNNING", "CANCEL_PENDING") and step.kill_signal is None:
                step.kill_signal = signal.SIGTERM
        self.kick(cluster)

    def terminated(self, cluster):
        if not self.live(cluster) or cluster.state != "TERMINATING" or cluster.running:
            return
        cluster.state = cluster.end_state
        cluster.ended = now()
        log(f"{cluster.id} {cluster.state}")

    def step_ended(self, cluster, step, state, failure):
        step.state = state
        step.failure = failure
        step.ended = now()
        step.proc = None
        cluster.running = None
        log(f"{cluster.id} {step.id} {state}")
        if state == "FAILED" and cluster.state not in ENDING:
            action = step.action_on_failure
            if action in ("TERMINATE_CLUSTER", "TERMINATE_JOB_FLOW"):
                cluster.end_state = "TERMINATED_WITH_ERRORS"
                self.terminate(cluster, "STEP_FAILURE", "Shut down as step failed")
            elif action == "CANCEL_AND_WAIT":
                for s in cluster.steps:
                    if s.state == "PENDING":
                        s.state = "CANCELLED"
                        s.ended = now()
        self.kick(cluster)

    # ---- running a step (its own thread) ----------------------------------------------------

    def command(self, step, folder):
        """The argv to run for a step, its S3 scripts downloaded into `folder`."""
        if not step.jar.endswith("command-runner.jar"):
            raise RuntimeError(
                f"the EMR emulator runs only command-runner.jar steps, not {step.jar}"
            )
        if not step.args:
            raise RuntimeError("command-runner.jar needs Args")
        argv = []
        for arg in step.args:
            if re.match(r"^s3[an]?://", arg) and arg.endswith(".py"):
                bucket, key = parse_s3(arg)
                local = os.path.join(folder, "scripts", os.path.basename(key) or "job.py")
                os.makedirs(os.path.dirname(local), exist_ok=True)
                try:
                    self.s3().download_file(bucket, key, local)
                except Exception as e:  # noqa: BLE001 - any failure fails the step
                    raise RuntimeError(f"cannot download {arg}: {e}") from e
                arg = local
            argv.append(arg)
        if argv[0] == "spark-submit":
            if not self.spark_home:
                raise RuntimeError("SPARK_HOME is not set for the EMR emulator")
            rest = argv[1:]
            given_master = any(a == "--master" or a.startswith("--master=") for a in rest)
            head = [os.path.join(self.spark_home, "bin", "spark-submit")]
            if not given_master:
                head += ["--master", "local[2]", "--conf", "spark.ui.enabled=false"]
                # EMR jobs often say --deploy-mode cluster (for YARN), which local mode refuses.
                kept, skip = [], False
                for a in rest:
                    if skip:
                        skip = False
                    elif a == "--deploy-mode":
                        skip = True
                    elif not a.startswith("--deploy-mode="):
                        kept.append(a)
                rest = kept
            argv = head + rest
        return argv

    def run_step(self, cluster, step):
        folder = os.path.join(self.work, step.id)
        os.makedirs(folder, exist_ok=True)
        out_path = os.path.join(folder, "stdout")
        err_path = os.path.join(folder, "stderr")
        rc = None
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            try:
                argv = self.command(step, folder)
                with self.lock:
                    if self.live(cluster) and step.kill_signal is None:
                        log(f"{cluster.id} {step.id} runs: {' '.join(argv)}")
                        env = dict(os.environ)
                        if self.spark_home:
                            env["SPARK_HOME"] = self.spark_home
                        step.proc = subprocess.Popen(
                            argv,
                            cwd=folder,
                            stdin=subprocess.DEVNULL,
                            stdout=out,
                            stderr=err,
                            start_new_session=True,
                            env=env,
                        )
                proc = step.proc
                if proc is not None:
                    rc = self.wait(step, proc)
            except Exception as e:  # noqa: BLE001 - the step fails with the reason in its stderr
                err.write(f"emr-emulator: {e}\n".encode())
                rc = -1
        with self.lock:
            if not self.live(cluster):
                return
            cancelled = step.kill_signal is not None
            log_uri = cluster.log_uri
        if rc == 0 and not cancelled:
            state, failure = "COMPLETED", None
        elif cancelled:
            state, failure = "CANCELLED", None
        else:
            state = "FAILED"
            failure = {"Reason": "Unknown error.", "Message": last_line(err_path)}
        if log_uri:
            stderr_url = self.upload_logs(log_uri, cluster.id, step.id, out_path, err_path)
            if failure is not None and stderr_url:
                failure["LogFile"] = stderr_url
        with self.lock:
            if self.live(cluster):
                self.step_ended(cluster, step, state, failure)

    def wait(self, step, proc):
        """Wait for the step's process, killing its group when the step is cancelled."""
        sent, sent_at = None, 0.0
        while True:
            try:
                rc = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            with self.lock:
                wanted = step.kill_signal
            if wanted is not None and sent is None:
                log(f"{step.id}: sending {signal.Signals(wanted).name} to process group {proc.pid}")
                kill_group(proc.pid, wanted)
                sent, sent_at = wanted, time.monotonic()
            elif sent == signal.SIGTERM and time.monotonic() - sent_at > KILL_GRACE_SECONDS:
                log(f"{step.id}: sending SIGKILL to process group {proc.pid}")
                kill_group(proc.pid, signal.SIGKILL)
                sent = signal.SIGKILL
        # Whatever the leader left behind in its group (a python worker, a JVM) goes too.
        kill_group(proc.pid, signal.SIGKILL)
        return rc

    def upload_logs(self, log_uri, cluster_id, step_id, out_path, err_path):
        """Uploads stdout.gz and stderr.gz; returns stderr's S3 URL, or None when it failed."""
        base = log_uri if log_uri.endswith("/") else log_uri + "/"
        prefix = f"{base}{cluster_id}/steps/{step_id}/"
        try:
            bucket, key = parse_s3(prefix)
            s3 = self.s3()
            for name, path in (("stdout", out_path), ("stderr", err_path)):
                with open(path, "rb") as f:
                    body = gzip.compress(f.read())
                s3.put_object(Bucket=bucket, Key=f"{key}{name}.gz", Body=body)
        except Exception as e:  # noqa: BLE001 - a failed upload does not change the step's state
            log(f"{step_id}: log upload to {prefix} failed: {e}")
            return None
        return f"{prefix}stderr.gz"

    # ---- operations -------------------------------------------------------------------------

    def RunJobFlow(self, req, region):
        specs = req.get("Steps") or []
        if not isinstance(specs, list):
            raise bad("Steps must be a list")
        with self.lock:
            cluster = Cluster(req, region)
            cluster.steps = [Step(cluster, s) for s in specs]
            self.clusters[cluster.id] = cluster
            self.all_steps.extend(cluster.steps)
            self.later(self.startup_seconds, self.became_ready, cluster)
            ids = [cluster.id] + [s.id for s in cluster.steps]
            return {"JobFlowId": cluster.id, "ClusterArn": cluster.arn}, ids

    def DescribeCluster(self, req, region):
        with self.lock:
            cluster = self.cluster(req.get("ClusterId"))
            return {"Cluster": cluster.describe()}, [cluster.id]

    def ListClusters(self, req, region):
        states = req.get("ClusterStates") or None
        with self.lock:
            found = [
                {
                    "Id": c.id,
                    "Name": c.name,
                    "Status": c.status(),
                    "NormalizedInstanceHours": 0,
                    "ClusterArn": c.arn,
                }
                for c in reversed(list(self.clusters.values()))
                if states is None or c.state in states
            ]
        return page(found, "Clusters", req.get("Marker")), []

    def AddJobFlowSteps(self, req, region):
        specs = req.get("Steps")
        if not isinstance(specs, list) or not specs:
            raise bad("Steps is required")
        with self.lock:
            cluster = self.cluster(req.get("JobFlowId"))
            if cluster.state in ENDING:
                raise ApiError(
                    "ValidationException",
                    "A job flow that is shutting down, terminated, or finished may not be modified.",
                )
            steps = [Step(cluster, s) for s in specs]
            cluster.steps.extend(steps)
            self.all_steps.extend(steps)
            self.kick(cluster)
            ids = [s.id for s in steps]
            return {"StepIds": ids}, [cluster.id] + ids

    def step(self, cluster, step_id):
        for s in cluster.steps:
            if s.id == step_id:
                return s
        raise bad(f"Step id '{step_id}' is not valid.")

    def DescribeStep(self, req, region):
        with self.lock:
            cluster = self.cluster(req.get("ClusterId"))
            step = self.step(cluster, req.get("StepId"))
            return {"Step": step.describe()}, [cluster.id, step.id]

    def ListSteps(self, req, region):
        states = req.get("StepStates") or None
        ids = req.get("StepIds") or None
        with self.lock:
            cluster = self.cluster(req.get("ClusterId"))
            found = [
                s.describe()
                for s in reversed(cluster.steps)
                if (states is None or s.state in states) and (ids is None or s.id in ids)
            ]
        return page(found, "Steps", req.get("Marker")), [cluster.id]

    def CancelSteps(self, req, region):
        ids = req.get("StepIds")
        if not isinstance(ids, list) or not ids:
            raise bad("StepIds is required")
        option = req.get("StepCancellationOption") or "SEND_INTERRUPT"
        if option not in ("SEND_INTERRUPT", "TERMINATE_PROCESS"):
            raise bad(f"StepCancellationOption `{option}` is not valid")
        infos = []
        with self.lock:
            cluster = self.cluster(req.get("ClusterId"))
            for step_id in ids:
                step = next((s for s in cluster.steps if s.id == step_id), None)
                if step is None:
                    infos.append(cancel_info(step_id, "FAILED", f"Step {step_id} does not exist."))
                elif step.state == "PENDING":
                    step.state = "CANCELLED"
                    step.ended = now()
                    infos.append(cancel_info(step_id, "SUBMITTED", ""))
                elif step.state in ("RUNNING", "CANCEL_PENDING"):
                    # The step's thread sends the signal; the step is CANCELLED once it is dead.
                    step.state = "CANCEL_PENDING"
                    if step.kill_signal is None:
                        step.kill_signal = (
                            signal.SIGKILL if option == "TERMINATE_PROCESS" else signal.SIGTERM
                        )
                    infos.append(cancel_info(step_id, "SUBMITTED", ""))
                else:
                    infos.append(
                        cancel_info(
                            step_id,
                            "FAILED",
                            f"Step {step_id} is in state {step.state} and cannot be cancelled.",
                        )
                    )
            self.kick(cluster)
        return {"CancelStepsInfoList": infos}, [cluster.id] + list(ids)

    def TerminateJobFlows(self, req, region):
        ids = req.get("JobFlowIds")
        if not isinstance(ids, list) or not ids:
            raise bad("JobFlowIds is required")
        with self.lock:
            clusters = [self.cluster(i) for i in ids]
            if any(c.termination_protected and c.state not in ENDING for c in clusters):
                raise ApiError(
                    "ValidationException",
                    "Could not shut down one or more job flows since they are termination protected.",
                )
            for c in clusters:
                self.terminate(c, "USER_REQUEST", "Terminated by user request")
        return {}, list(ids)

    OPERATIONS = (
        "RunJobFlow",
        "DescribeCluster",
        "ListClusters",
        "AddJobFlowSteps",
        "DescribeStep",
        "ListSteps",
        "CancelSteps",
        "TerminateJobFlows",
    )

    # ---- admin ------------------------------------------------------------------------------

    def steps_listing(self):
        with self.lock:
            return [
                {
                    "cluster_id": s.cluster.id,
                    "step_id": s.id,
                    "name": s.name,
                    "state": s.state,
                    "args": list(s.args),
                }
                for s in self.all_steps
            ]

    def kill_all(self):
        """SIGKILLs every running step's process group; callers hold the lock."""
        for s in self.all_steps:
            if s.proc is not None:
                kill_group(s.proc.pid, signal.SIGKILL)

    def reset(self):
        with self.lock:
            self.kill_all()
            self.clusters = {}
            self.all_steps = []
            old, self.work = self.work, tempfile.mkdtemp(prefix="emr-emulator-")
        shutil.rmtree(old, ignore_errors=True)

    def shutdown(self):
        with self.lock:
            self.kill_all()
            self.clusters = {}
        shutil.rmtree(self.work, ignore_errors=True)


def page(items, member, marker):
    start = int(marker) if isinstance(marker, str) and marker.isdigit() else 0
    out = {member: items[start : start + PAGE]}
    if start + PAGE < len(items):
        out["Marker"] = str(start + PAGE)
    return out


def cancel_info(step_id, status, reason):
    out = {"StepId": step_id, "Status": status}
    if reason:
        out["Reason"] = reason
    return out


def last_line(path):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 65536))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.strip():
            return line.strip()[:10000]
    return ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
    server_version = "flow-emr-emulator"
    emulator = None  # set in main

    def log_message(self, format, *args):  # noqa: A002 - our own one line per request instead
        pass

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, status, payload, headers=None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, kind, message):
        self.send(400, {"__type": kind, "message": message}, {"x-amzn-ErrorType": kind})

    def do_GET(self):
        self.body()
        path = self.path.split("?")[0].rstrip("/")
        if path == "/emr-api":
            self.send(200, {"ok": True})
        elif path == "/emr-api/steps":
            self.send(200, self.emulator.steps_listing())
        else:
            self.send(404, {"message": f"no route {self.path}"})
            return
        log(f"GET {path}")

    def do_POST(self):
        raw = self.body()
        path = self.path.split("?")[0].rstrip("/")
        if path == "/emr-api/reset":
            self.emulator.reset()
            log("reset: every step killed and every cluster forgotten")
            self.send(200, {"ok": True})
            return
        target = self.headers.get("X-Amz-Target", "")
        service, _, op = target.partition(".")
        if service != "ElasticMapReduce" or op not in Emulator.OPERATIONS:
            log(f"unknown operation `{target}`")
            self.error("UnknownOperationException", f"Unknown operation {target or '(none)'}")
            return
        try:
            req = json.loads(raw or b"{}")
            if not isinstance(req, dict):
                raise ValueError("the body is not a JSON object")
        except ValueError as e:
            log(f"{op}: bad JSON: {e}")
            self.error("InvalidRequestException", f"Bad JSON body: {e}")
            return
        m = re.search(r"Credential=[^/]+/\d+/([^/]+)/", self.headers.get("Authorization", ""))
        region = m.group(1) if m else "us-east-1"
        try:
            out, ids = getattr(self.emulator, op)(req, region)
        except ApiError as e:
            log(f"{op} -> {e.kind}: {e.message}")
            self.error(e.kind, e.message)
            return
        except Exception as e:  # noqa: BLE001 - a bug here is a 500, not a dead server
            log(f"{op} -> internal error: {e!r}")
            self.send(
                500,
                {"__type": "InternalServerError", "message": str(e)},
                {"x-amzn-ErrorType": "InternalServerError"},
            )
            return
        log(f"{op} {' '.join(ids)}".rstrip())
        self.send(200, out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--s3-endpoint", required=True, help="where LogUri and s3:// scripts live")
    p.add_argument("--startup-seconds", type=float, default=1.0, help="STARTING -> WAITING")
    p.add_argument(
        "--termination-seconds", type=float, default=0.5, help="TERMINATING -> TERMINATED"
    )
    p.add_argument(
        "--spark-home", default=os.environ.get("SPARK_HOME"), help="default: $SPARK_HOME"
    )
    a = p.parse_args()
    emulator = Emulator(a.s3_endpoint, a.spark_home, a.startup_seconds, a.termination_seconds)
    Handler.emulator = emulator
    server = ThreadingHTTPServer((a.host, a.port), Handler)
    server.daemon_threads = True

    # Steps run in their own sessions, so they would outlive us: a SIGTERM (testbed_stop) ends
    # them before we go.
    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    log(f"listening on http://{a.host}:{a.port}/ (S3 {a.s3_endpoint}, SPARK_HOME {a.spark_home})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.shutdown()
        server.server_close()
        log("stopped")


if __name__ == "__main__":
    main()
