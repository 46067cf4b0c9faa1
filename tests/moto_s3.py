"""An S3-compatible server on loopback (moto's) for the object-storage tests.

The server speaks the S3 protocol over HTTP, so pyarrow's S3 client and Ray Tune's
remote storage run against it exactly as against AWS; only the endpoint differs. The
credentials are moto's dummies. Start it before Ray, so Ray's worker processes
inherit the same (dummy) environment.
"""

from __future__ import annotations

import contextlib
import logging
import os

import pyarrow.fs as pafs

BUCKET = "lrwa-studies"
DUMMY_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@contextlib.contextmanager
def moto_server():
    """host:port of a running moto S3 server holding one empty bucket, BUCKET."""
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in DUMMY_ENVIRONMENT}
    os.environ.update(DUMMY_ENVIRONMENT)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"{host}:{port}"
    client(endpoint, allow_bucket_creation=True).create_dir(BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def client(endpoint, **options):
    """A pyarrow S3 client of its own, as another machine would have."""
    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", **options)


def s3_uri(endpoint, path, bucket=BUCKET):
    return f"s3://{bucket}/{path}?endpoint_override={endpoint}&scheme=http"


def stored(endpoint, prefix):
    """Paths (relative to `prefix`) of every object under it in BUCKET."""
    root = f"{BUCKET}/{prefix}"
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return {item.path[len(root) + 1:] for item in client(endpoint).get_file_info(selector)
            if item.type == pafs.FileType.File}


def read_object(endpoint, path):
    with client(endpoint).open_input_stream(f"{BUCKET}/{path}") as source:
        return source.readall()
