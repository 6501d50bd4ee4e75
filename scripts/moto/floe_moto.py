"""moto in server mode (moto.server.main, as the moto_server command runs it) with one change made
for floe's tests: Glue's UpdateTable honours VersionId, as the Glue API documents it.

AWS Glue API reference, UpdateTable
(https://docs.aws.amazon.com/glue/latest/webapi/API_UpdateTable.html):
  VersionId -- "The version ID at which to update the table contents."
  ConcurrentModificationException (HTTP 400) -- "Two processes are trying to modify a resource
  simultaneously."
Glue rejects an UpdateTable whose VersionId is not the table's current version; Iceberg Java's
GlueCatalog, pyiceberg's GlueCatalog and floe all rely on that for their optimistic commit. moto
5.2.5 ignores the parameter (moto/glue/responses.py update_table never reads it), so a stale writer
would always win there and a zombie test could not fail. This wraps moto's update_table: with a
VersionId that is not the current one, it raises ConcurrentModificationException and changes
nothing. The check and the update happen under one lock (moto's server is threaded). Without a
VersionId, UpdateTable behaves as before (as on AWS).

Nothing in floe depends on this file; only scripts/moto.sh runs it.
"""

from __future__ import annotations

import sys
import threading

from moto.core.exceptions import JsonRESTError
from moto.core.responses import EmptyResult
from moto.glue import models, responses


class ConcurrentModificationException(JsonRESTError):
    code = 400

    def __init__(self, message: str) -> None:
        super().__init__("ConcurrentModificationException", message)


_lock = threading.Lock()


def update_table(self, database_name, table_name, table_input, version_id=None):
    with _lock:
        table = self.get_table(database_name, table_name)
        current = str(table._current_version)
        if version_id is not None and str(version_id) != current:
            raise ConcurrentModificationException(
                f"Update table failed due to concurrent modifications: table {database_name}.{table_name} "
                f"is at version {current}, the request names version {version_id}")
        table.update(table_input)


def update_table_response(self):
    database_name = self.parameters.get("DatabaseName")
    table_input = self.parameters.get("TableInput")
    self.glue_backend.update_table(database_name, table_input.get("Name"), table_input,
                                   self.parameters.get("VersionId"))
    return EmptyResult()


models.GlueBackend.update_table = update_table
responses.GlueResponse.update_table = update_table_response

if __name__ == "__main__":
    from moto.server import main

    sys.exit(main())
