# ---------------------------------------------------------------------------------------------
# Where baseroll itself runs
# ---------------------------------------------------------------------------------------------

variable "project_id" {
  description = "Host project: topics, functions, scheduler and service accounts live here."
  type        = string
}

variable "region" {
  description = "Region of the functions, the Eventarc triggers and the scheduler job."
  type        = string
  default     = "us-central1"
}

# ---------------------------------------------------------------------------------------------
# The fleet baseroll rolls (rendered into BASEROLL_CONFIG_YAML)
# ---------------------------------------------------------------------------------------------

variable "fleet_projects" {
  description = "Projects whose Cloud Run services baseroll discovers and rolls."
  type        = list(string)

  validation {
    condition     = length(var.fleet_projects) > 0 && alltrue([for p in var.fleet_projects : can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", p))])
    error_message = "fleet_projects: at least one project id (6-30 chars, lowercase letters, digits, hyphens)."
  }
}

variable "fleet_regions" {
  description = "Regions to list services in (Cloud Run has no region wildcard)."
  type        = list(string)

  validation {
    condition     = length(var.fleet_regions) > 0 && alltrue([for r in var.fleet_regions : can(regex("^[a-z]+-[a-z]+[0-9]+$", r))])
    error_message = "fleet_regions: at least one region such as us-central1."
  }
}

variable "base_tracks" {
  description = "Base images baseroll follows: a name and the tag it tracks (host/repository:tag)."
  type = list(object({
    name  = string
    image = string
  }))

  validation {
    condition     = length(var.base_tracks) > 0 && alltrue([for t in var.base_tracks : can(regex("^[^/@]+/[^@]+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", t.image))])
    error_message = "base_tracks: each image must follow a tag, e.g. us-docker.pkg.dev/p/bases/python:3.12 (no digest)."
  }

  validation {
    condition     = length(distinct([for t in var.base_tracks : t.name])) == length(var.base_tracks)
    error_message = "base_tracks: names must be unique."
  }
}

variable "allowed_registries" {
  description = "Registry hosts baseroll may read from and write to (host[:port]); every base track's host must be listed."
  type        = list(string)

  validation {
    condition     = length(var.allowed_registries) > 0 && alltrue([for h in var.allowed_registries : length(h) > 0 && !strcontains(h, "/")])
    error_message = "allowed_registries: host[:port] entries, no paths."
  }
}

variable "base_repositories" {
  description = "Artifact Registry repositories holding base images (read by the planner)."
  type = list(object({
    project    = string
    location   = string
    repository = string
  }))
  default = []
}

variable "app_repositories" {
  description = "Artifact Registry repositories holding the fleet's app images (rebased by the planner, read by the worker)."
  type = list(object({
    project    = string
    location   = string
    repository = string
  }))
  default = []
}

variable "fleet_runtime_service_accounts" {
  description = "Emails of the service accounts the fleet's Cloud Run services run as; the worker must act as them to deploy a new revision."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for e in var.fleet_runtime_service_accounts : can(regex("^[^@]+@[^@]+\\.gserviceaccount\\.com$", e))])
    error_message = "fleet_runtime_service_accounts: service account emails (...@....gserviceaccount.com)."
  }
}

# ---------------------------------------------------------------------------------------------
# Labels on fleet services
# ---------------------------------------------------------------------------------------------

variable "opt_out_label" {
  description = "Service label key; value \"true\" opts a service out of every roll."
  type        = string
  default     = "baseroll-opt-out"
}

variable "canary_label" {
  description = "Service label key; value \"canary\" puts a service in the first wave."
  type        = string
  default     = "baseroll-cohort"
}

variable "app_tag_label" {
  description = "Service label key naming the app tag a digest-pinned service was deployed from (multi-tenant redeploys)."
  type        = string
  default     = "baseroll-app-tag"
}

# ---------------------------------------------------------------------------------------------
# Rollout pacing and safety
# ---------------------------------------------------------------------------------------------

variable "waves" {
  description = "Cumulative fraction of the matched fleet rolled by the end of each wave; the last wave is 1.0."
  type        = list(number)
  default     = [0.01, 0.1, 0.5, 1.0]

  validation {
    condition = (
      length(var.waves) > 0
      && alltrue([for w in var.waves : w > 0 && w <= 1])
      && var.waves[length(var.waves) - 1] == 1
      && alltrue([for i in range(1, length(var.waves)) : var.waves[i] > var.waves[i - 1]])
    )
    error_message = "waves: strictly increasing fractions in (0, 1], ending at 1.0."
  }
}

variable "failure_budget" {
  description = "Failed (rolled-back) services a wave tolerates before the rollout halts: a count (1) or a percentage of the wave (\"5%\")."
  type        = any
  default     = 1

  validation {
    condition = (
      can(regex("^[0-9]+(\\.[0-9]+)?%$", var.failure_budget))
      || try(var.failure_budget >= 0 && floor(var.failure_budget) == var.failure_budget, false)
    )
    error_message = "failure_budget: a whole number >= 0, or a percentage string such as \"5%\"."
  }
}

variable "write_quota_per_minute" {
  description = "Cloud Run Admin API writes per minute baseroll allows itself, per project and region."
  type        = number
  default     = 60

  validation {
    condition     = var.write_quota_per_minute >= 1
    error_message = "write_quota_per_minute: must be >= 1."
  }
}

variable "region_write_quota" {
  description = "Per-region overrides of write_quota_per_minute (region => writes per minute)."
  type        = map(number)
  default     = {}

  validation {
    condition     = alltrue([for r, q in var.region_write_quota : can(regex("^[a-z]+-[a-z]+[0-9]+$", r)) && q >= 1 && floor(q) == q])
    error_message = "region_write_quota: region => whole number >= 1."
  }
}

variable "ready_timeout_seconds" {
  description = "How long the worker waits for a new revision to become ready before rolling back; an update, a rollback, both waits and the verification at zero traffic must fit one 540 s invocation."
  type        = number
  default     = 240

  validation {
    condition     = var.ready_timeout_seconds >= 1 && var.ready_timeout_seconds <= 255
    error_message = "ready_timeout_seconds: between 1 and 255 (2 x 255 s of gates + 30 s of the worker's own work = 540 s, the function's limit); at most 240 with verify_at_zero_traffic (its 3 x 5 s requests and 15 s traffic write), which the functions' config check enforces."
  }
}

variable "verify_at_zero_traffic" {
  description = "Verify each new revision at zero traffic (its tag URL answers verify_path) before it gets any traffic (rollout.verify). Grants the worker roles/run.invoker in every fleet project: it can then invoke any service there."
  type        = bool
  default     = true
}

variable "verify_path" {
  description = "The path the verification requests GET on each new revision (a service's baseroll-verify-path label overrides it)."
  type        = string
  default     = "/"

  validation {
    condition     = can(regex("^/[!$&-;=?-~]{0,2047}$", var.verify_path))
    error_message = "verify_path: an absolute path such as /healthz (no spaces or '#')."
  }
}

variable "rollout_concurrency" {
  description = "Services a planner invocation works on at once."
  type        = number
  default     = 8

  validation {
    condition     = var.rollout_concurrency >= 1 && var.rollout_concurrency <= 256
    error_message = "rollout_concurrency: between 1 and 256."
  }
}

variable "drift_policy" {
  description = "What to do when the new base changed Env/Entrypoint/Cmd/User/WorkingDir: apply-or-refuse, keep-app or ignore."
  type        = string
  default     = "apply-or-refuse"

  validation {
    condition     = contains(["apply-or-refuse", "keep-app", "ignore"], var.drift_policy)
    error_message = "drift_policy: one of apply-or-refuse, keep-app, ignore."
  }
}

# ---------------------------------------------------------------------------------------------
# Triggers, scheduling, sizing
# ---------------------------------------------------------------------------------------------

variable "create_source_topics" {
  description = "Per source topic: create it here (true) or read the existing one (false). `gcr` is Artifact Registry's, `cloud_builds` Cloud Build's (`cloud-builds`); either may exist without the other, e.g. Cloud Build creates `cloud-builds` itself. Omitted keys default to true."
  type = object({
    gcr          = optional(bool, true)
    cloud_builds = optional(bool, true)
  })
  default = {}
}

variable "sweep_schedule" {
  description = "Cron (UTC) of the reconciling sweep published to baseroll-requests."
  type        = string
  default     = "0 */6 * * *"
}

variable "max_instances" {
  description = "Maximum instances per function (entry point name => count). Missing entries use 3."
  type        = map(number)
  default = {
    on_artifact_push  = 3
    on_build_complete = 3
    on_roll_request   = 3
    roll_service      = 10
    on_roll_result    = 3
  }
}

variable "function_memory" {
  description = "Memory of each function instance."
  type        = string
  default     = "512Mi"
}

variable "attach_dead_letter_policies" {
  description = "Run gcloud (must be on PATH with credentials) after apply to attach a dead-letter topic to every trigger's subscription (Eventarc creates them; Terraform cannot address them). false: run `terraform output dead_letter_commands` by hand instead."
  type        = bool
  default     = true
}

variable "max_delivery_attempts" {
  description = "Deliveries of one message before it is dead-lettered (5-100): a transient failure is retried with backoff this often (docs/RELIABILITY.md#error-classification)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_delivery_attempts >= 5 && var.max_delivery_attempts <= 100
    error_message = "max_delivery_attempts: between 5 and 100 (Pub/Sub limits)."
  }
}

variable "signature_policy" {
  description = "Signatures do not follow a rebase: \"report\" deploys and logs it; \"require\" deploys only rebased images that are signed."
  type        = string
  default     = "report"
  validation {
    condition     = contains(["report", "require"], var.signature_policy)
    error_message = "signature_policy: report or require."
  }
}

variable "sign_request_topic" {
  description = "Topic id (host project) of the signing step that baseroll asks to sign rebased images; null for none."
  type        = string
  default     = null
}

variable "builder_run_builder" {
  description = "Also grant the functions' build account roles/run.builder on the host project, as Google documents for a build service account, when the narrower grants (logs, source objects, the baseroll-functions repository) are not enough for a build."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------
# Operators in the loop: approvals and maintenance windows (README.md#approvals, #maintenance-windows)
# ---------------------------------------------------------------------------------------------

variable "rollout_approval" {
  description = "Where a rollout waits for `baseroll approve`: none, after-canary (before wave 1) or every-wave."
  type        = string
  default     = "none"

  validation {
    condition     = contains(["none", "after-canary", "every-wave"], var.rollout_approval)
    error_message = "rollout_approval: none, after-canary or every-wave."
  }
}

variable "maintenance_windows" {
  description = "rollout.windows: when services may be written. Each rule: match (project, region, label \"k=v\"; all optional), days (mon..sun), start and end (HH:MM local; an end not after the start is the next day), time_zone (IANA). The functions' config check validates them."
  type = list(object({
    match = optional(object({
      project = optional(string)
      region  = optional(string)
      label   = optional(string)
    }))
    days      = list(string)
    start     = string
    end       = string
    time_zone = string
  }))
  default = []
}

# ---------------------------------------------------------------------------------------------
# Notifications (docs/EVENTS.md)
# ---------------------------------------------------------------------------------------------

variable "chat_webhook_secret" {
  description = "Secret Manager secret id (in the host project) whose latest version is a Google Chat incoming-webhook URL. Set it to deploy notify_chat, which posts rollout events from baseroll-events to that space; null (the default) deploys nothing."
  type        = string
  default     = null

  validation {
    condition     = var.chat_webhook_secret == null || can(regex("^[A-Za-z0-9_-]{1,255}$", var.chat_webhook_secret))
    error_message = "chat_webhook_secret: a secret id (letters, digits, _ and -), not a path or the URL itself."
  }
}

variable "chat_event_kinds" {
  description = "Event kinds notify_chat posts (docs/EVENTS.md); empty: every kind."
  type        = list(string)
  default     = ["started", "halted", "awaiting-approval", "resumed", "aborted", "superseded", "finished"]

  validation {
    # The kinds of baseroll.dev/rollout-event/v1 (functions/baseroll/contracts/events.py).
    condition = alltrue([for k in var.chat_event_kinds : contains([
      "started", "wave-released", "wave-settled", "halted", "awaiting-approval", "resumed", "aborted", "superseded",
      "finished",
    ], k)])
    error_message = "chat_event_kinds: kinds of baseroll.dev/rollout-event/v1 (docs/EVENTS.md)."
  }
}
