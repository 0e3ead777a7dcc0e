"""The integration tests' side door into the S3 test server (moto), so the
tests can make buckets and look at objects without an S3 crate of their own:

    python s3.py ENDPOINT create-bucket BUCKET
    python s3.py ENDPOINT list BUCKET [PREFIX]   -> JSON list of keys, sorted
    python s3.py ENDPOINT get BUCKET KEY         -> the object's bytes on stdout
                                                    (exit 3: no such key)
    python s3.py ENDPOINT put BUCKET KEY         <- the object's bytes on stdin

Credentials and region come from the usual AWS_* environment variables
(the harness sets them to the same values it gives sluice), so this script
holds no secret of its own.
"""

import json
import sys

import boto3
from botocore.exceptions import ClientError

MISSING = 3


def main() -> None:
    endpoint, command, bucket = sys.argv[1:4]
    rest = sys.argv[4:]
    s3 = boto3.client("s3", endpoint_url=endpoint)
    if command == "create-bucket":
        s3.create_bucket(Bucket=bucket)
    elif command == "list":
        prefix = rest[0] if rest else ""
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        json.dump(sorted(keys), sys.stdout)
    elif command == "get":
        try:
            body = s3.get_object(Bucket=bucket, Key=rest[0])["Body"].read()
        except ClientError as e:
            if e.response["Error"]["Code"] in ("NoSuchKey", "404"):
                sys.exit(MISSING)
            raise
        sys.stdout.buffer.write(body)
    elif command == "put":
        s3.put_object(Bucket=bucket, Key=rest[0], Body=sys.stdin.buffer.read())
    else:
        sys.exit(f"unknown command {command!r}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
