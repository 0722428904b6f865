job "shop" {
  group "server" {
    count = 3

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    restart {
      attempts = 3
      delay    = "10s"
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
        ports = ["http"]
        data  = "/data"
      }
    }
  }
}
