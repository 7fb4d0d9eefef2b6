//! `moto_server` (PyPI `moto[server]`): one loopback port serving STS, S3
//! and EC2 instance metadata, for the S3 sink's credential chain. Its
//! request log (werkzeug's, one line per request with the query string)
//! shows which calls were made and which access key signed each S3 request.

use std::path::PathBuf;
use std::process::Command;

use super::{cache_dir, free_port, locate, run_bounded, ServiceProcess, START_TIMEOUT};

/// The `moto_server` script of the venv `scripts/test` installs.
pub fn moto_bin() -> PathBuf {
    locate(
        "SLUICE_TEST_MOTO",
        "moto_server (pip moto[server])",
        &[cache_dir().join("venv-moto/bin/moto_server")],
    )
}

/// The venv's python, which has boto3 (a dependency of moto).
pub fn moto_python() -> PathBuf {
    locate(
        "SLUICE_TEST_MOTO_PYTHON",
        "the moto venv's python",
        &[cache_dir().join("venv-moto/bin/python")],
    )
}

/// A running `moto_server`; killed on drop.
pub struct Moto {
    process: ServiceProcess,
    _logs: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers.
    pub fn start() -> Moto {
        let logs = tempfile::TempDir::new().expect("temp dir");
        let port = free_port();
        let mut cmd = Command::new(moto_bin());
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let mut process = ServiceProcess::spawn("moto_server", cmd, logs.path().join("moto.log"), false);
        process.wait_for_tcp(&format!("127.0.0.1:{port}"), START_TIMEOUT);
        Moto {
            process,
            _logs: logs,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Runs a boto3 snippet against this server (`s3` is a client bound to
    /// it); returns its stdout.
    pub fn boto3(&self, code: &str) -> String {
        let script = format!(
            "import boto3, sys\ns3 = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
             aws_access_key_id='admin', aws_secret_access_key='admin')\n{code}\n",
            self.endpoint
        );
        let mut cmd = Command::new(moto_python());
        cmd.args(["-c", &script]);
        let out = run_bounded(cmd, None, std::time::Duration::from_secs(60));
        assert!(out.status.success(), "boto3: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates `bucket` with boto3.
    pub fn create_bucket(&self, bucket: &str) {
        self.boto3(&format!("s3.create_bucket(Bucket='{bucket}')"));
    }

    /// Every object of `bucket` read back with boto3, concatenated in key
    /// order (the sink writes uncompressed NDJSON in these tests).
    pub fn objects_text(&self, bucket: &str) -> String {
        self.boto3(&format!(
            "keys = sorted(o['Key'] for p in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}') \
             for o in p.get('Contents', []))\n\
             for k in keys:\n    sys.stdout.write(s3.get_object(Bucket='{bucket}', Key=k)['Body'].read().decode())"
        ))
    }

    /// moto's request log so far.
    pub fn log(&self) -> String {
        self.process.log_text()
    }

    /// The request lines of the log (`PUT /path?query HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                let start = l.find('"')? + 1;
                let end = start + l[start..].find('"')?;
                Some(l[start..end].to_owned())
            })
            .collect()
    }

    /// STS calls so far (`POST /`: S3's POSTs name a bucket).
    pub fn sts_calls(&self) -> usize {
        self.requests().iter().filter(|r| r.starts_with("POST / ")).count()
    }

    /// The access key ids that signed requests to `bucket`, in order
    /// (from the presigned URLs' `X-Amz-Credential`).
    pub fn signing_keys(&self, bucket: &str) -> Vec<String> {
        let prefix = format!("/{bucket}");
        self.requests()
            .iter()
            .filter(|r| r.split(' ').nth(1).is_some_and(|p| p.starts_with(&prefix)))
            .filter_map(|r| {
                let at = r.find("X-Amz-Credential=")? + "X-Amz-Credential=".len();
                let rest = &r[at..];
                let end = rest.find("%2F").or_else(|| rest.find('/'))?;
                Some(rest[..end].to_owned())
            })
            .collect()
    }
}
