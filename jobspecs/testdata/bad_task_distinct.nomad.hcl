job "shop" {
  group "server" {
    count = 3

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
      constraint {
        distinct_hosts = true
      }
      config {
        image = "shop:1"
        ports = ["http"]
        data  = "/data"
      }
    }
  }
}
