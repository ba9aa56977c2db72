# ---------------------------------------------------------------------------------------------
# The rollout store: rollout records and per-track lineage, in a Firestore database (native
# mode) of its own, written with compare-and-swap (docs/RELIABILITY.md#the-rollout-store).
# Firestore roles are granted on the project, so each grant carries an IAM condition that limits
# it to this database (Firestore IAM, "IAM conditions": resource.name of the database).
# ---------------------------------------------------------------------------------------------

resource "google_firestore_database" "baseroll" {
  project     = var.project_id
  name        = local.firestore_database
  location_id = var.region
  type        = "FIRESTORE_NATIVE"

  # Rollout records are the operators' decisions (aborts, halts): never deleted with the stack.
  delete_protection_state = "DELETE_PROTECTION_ENABLED"
  deletion_policy         = "ABANDON"

  depends_on = [google_project_service.apis]
}

# The planner identity runs every path that writes: on_artifact_push / on_build_complete /
# on_roll_request start rollouts (RecordStore.create) and record track versions (lineage);
# on_roll_request also aborts, resumes and sweeps (RecordStore.update); on_roll_result is the
# coordinator step, which claims, renews, finishes and gives back (RecordStore.update).
resource "google_project_iam_member" "planner_store_user" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.baseroll["planner"].email}"

  condition {
    title       = "baseroll-store-only"
    description = "Only the baseroll Firestore database."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${local.firestore_database}\""
  }
}

# The worker (roll_service) only reads a record: before deploying it checks the rollout was not
# halted or aborted (rollout/worker.py, policy.cancelled). Read-only.
resource "google_project_iam_member" "worker_store_viewer" {
  project = var.project_id
  role    = "roles/datastore.viewer"
  member  = "serviceAccount:${google_service_account.baseroll["worker"].email}"

  condition {
    title       = "baseroll-store-only"
    description = "Only the baseroll Firestore database."
    expression  = "resource.name == \"projects/${var.project_id}/databases/${local.firestore_database}\""
  }
}
