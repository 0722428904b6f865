job "shop" {
  type = "service"

  update {
    max_parallel     = 1
    min_healthy_time = "30s"
  }

  reschedule {
    delay          = "5s"
    delay_function = "exponential"
    max_delay      = "1m"
    unlimited      = true
  }

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

    service {
      name = "shop-metrics"
      tags = ["prometheus"]
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
