variable "ports" {
  type = list(string)
}

job "shop" {
  group "server" {
    count = 3

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
        image = "shop:1"
        ports = var.ports
        data  = "/data"
      }
    }
  }
}
