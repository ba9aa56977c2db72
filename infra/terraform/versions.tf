terraform {
  # terraform_data (1.4) and check blocks (1.5).
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
    archive = {
      source = "hashicorp/archive"
      # Glob patterns in archive_file.excludes need 2.4 or later.
      version = "~> 2.4"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
