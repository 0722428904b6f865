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
      restart {
        mode = "delay"
      }
      config {
        image = "shop:1"
        ports = ["http"]
        data  = "/data"
      }
    }
  }
}
