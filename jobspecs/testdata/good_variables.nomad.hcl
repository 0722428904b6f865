# Values come from variables and locals with literal defaults.
variable "instances" {
  type    = number
  default = 3
}

variable "image" {
  type    = string
  default = "shop:1"
}

locals {
  data_dir = "/${local.leaf}"
  leaf     = "data"
}

job "shop" {
  group "server" {
    count = var.instances

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    restart {
      attempts = 1
      delay    = "2s"
      mode     = "fail"
    }

    network {
      port "http" {
        to = 8080
      }
      port "sync" {}
    }

    task "syncer" {
      driver = "bedrock"
      lifecycle {
        hook    = "prestart"
        sidecar = true
      }
      config {
        syncer {
          port = "sync"
        }
      }
    }

    task "app" {
      driver = "bedrock"
      config {
        image = var.image
        ports = ["http"]
        data  = local.data_dir
      }
    }
  }
}
