"""The integration tests' side door into the Azure Blob test server
(Azurite), so the tests can make containers and look at blobs without an
Azure crate of their own:

    python azure_blob.py create-container CONTAINER
    python azure_blob.py list CONTAINER [PREFIX]   -> JSON list of blob names, sorted
    python azure_blob.py get CONTAINER BLOB        -> the blob's bytes on stdout
                                                 (exit 3: no such blob)
    python azure_blob.py put CONTAINER BLOB        <- the blob's bytes on stdin

The server and account come from AZURE_STORAGE_CONNECTION_STRING, which
the harness sets from the same endpoint and key it gives sluice. (Not named
azure.py: the script's own folder comes first on sys.path, and would hide
the `azure` package.)
"""

import json
import os
import sys

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

MISSING = 3


def main() -> None:
    command, container = sys.argv[1:3]
    rest = sys.argv[3:]
    service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    client = service.get_container_client(container)
    if command == "create-container":
        client.create_container()
    elif command == "list":
        prefix = rest[0] if rest else None
        json.dump(sorted(b.name for b in client.list_blobs(name_starts_with=prefix)), sys.stdout)
    elif command == "get":
        try:
            body = client.download_blob(rest[0]).readall()
        except ResourceNotFoundError:
            sys.exit(MISSING)
        sys.stdout.buffer.write(body)
    elif command == "put":
        client.upload_blob(rest[0], sys.stdin.buffer.read(), overwrite=True)
    else:
        sys.exit(f"unknown command {command!r}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
