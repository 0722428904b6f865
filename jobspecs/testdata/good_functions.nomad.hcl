job "shop" {
  group "server" {
    count = max(3, length(["a", "b"]))

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
        image = format("shop:%d", 1)
        ports = ["http"]
        data  = lower("/DATA")
      }
    }
  }
}
