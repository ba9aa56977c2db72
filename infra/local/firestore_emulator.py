"""The real Firestore emulator (the `cloud-firestore-emulator` component gcloud ships) on 127.0.0.1.

Started from its jar on a free port, in native mode, and stopped by its PID. The unmodified
`google-cloud-firestore` client reaches it through FIRESTORE_EMULATOR_HOST (`env()`).

    with FirestoreEmulator() as fs:
        os.environ.update(fs.env())
"""
from __future__ import annotations

import os
from pathlib import Path

import httpx
from google.auth.credentials import AnonymousCredentials

from . import java_emulator
from .java_emulator import JavaEmulator
from .procs import LOOPBACK

MAIN_CLASS = "com.google.cloud.datastore.emulator.firestore.CloudFirestore"
PROJECT = "baseroll-host"  # the project the local stack's records live in
WARM_UP_PROJECT = "baseroll-warm-up"  # written once at start, never read by the stack


def find_jar() -> Path:
    """The emulator's jar (BASEROLL_FIRESTORE_EMULATOR_JAR overrides), or a RuntimeError saying how to get it."""
    return java_emulator.find_jar(what="Firestore emulator", component="cloud-firestore-emulator",
                                  pattern="cloud-firestore-emulator.jar",
                                  package="google-cloud-cli-firestore-emulator",
                                  override_var="BASEROLL_FIRESTORE_EMULATOR_JAR")


class FirestoreEmulator(JavaEmulator):
    """`with FirestoreEmulator() as fs: fs.host  # "127.0.0.1:PORT"`."""

    what = "Firestore emulator"
    log_name = "firestore.log"

    def env(self) -> dict[str, str]:
        """What a process needs so the unmodified client talks to this emulator."""
        return {"FIRESTORE_EMULATOR_HOST": self.host, "GOOGLE_CLOUD_PROJECT": PROJECT}

    def command(self, java: str) -> list[str]:
        return [java, "-Duser.language=en", "-cp", str(find_jar()), MAIN_CLASS, "start", "--host", LOOPBACK,
                "--port", str(self.port), "--database-mode", "firestore-native"]

    def start(self) -> "FirestoreEmulator":
        super().start()
        self.warm_up()
        return self

    def warm_up(self) -> None:
        """One write, read, transaction and query in a project of its own. The emulator's JVM takes
        about 1 s over its first write (measured: 0.96 s, then 0.03 s), which Firestore itself does
        not: without this, the first rollout of a run paid it inside its own timings."""
        from google.cloud import firestore

        # The client finds an emulator only through the environment, and reads it once, when made.
        saved = os.environ.get("FIRESTORE_EMULATOR_HOST")
        os.environ["FIRESTORE_EMULATOR_HOST"] = self.host
        try:
            client = firestore.Client(project=WARM_UP_PROJECT, credentials=AnonymousCredentials())
        finally:
            if saved is None:
                del os.environ["FIRESTORE_EMULATOR_HOST"]
            else:
                os.environ["FIRESTORE_EMULATOR_HOST"] = saved
        doc = client.collection("warm-up").document("doc")
        doc.set({"n": 1}, merge=True)
        doc.get()

        @firestore.transactional
        def bump(tx: firestore.Transaction) -> None:
            tx.update(doc, {"n": (doc.get(transaction=tx).get("n") or 0) + 1})

        bump(client.transaction())
        list(client.collection("warm-up").where(filter=firestore.FieldFilter("n", ">=", 0)).stream())
        client.close()

    def reset(self) -> None:
        """Delete every document of every database (the emulator's own endpoint)."""
        httpx.delete(f"http://{self.host}/emulator/v1/projects/{PROJECT}/databases/(default)/documents",
                     timeout=10).raise_for_status()
