variable "instances" {
  type = number
}

job "shop" {
  group "server" {
    count = var.instances

    constraint {
      operator = "distinct_hosts"
      value    = var.spread_out
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
        hook    = lower(var.hook)
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
        image = "shop:${var.tag}"
        ports = ["http"]
        data  = "/data"
      }
    }
  }
}
