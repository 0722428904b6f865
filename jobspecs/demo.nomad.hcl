# Bedrock demo: a small stateful HTTP app, replicated by Bedrock.
#
# The image is built locally by the project (`bedrock-demo:latest`, what
# `make demo` runs); it listens on 8080 and keeps its data in /data. Run it
# with:
#
#   nomad var put nomad/jobs/bedrock-demo sync_secret="$(openssl rand -hex 32)"
#   nomad-driver-bedrock validate demo.nomad.hcl
#   nomad job run demo.nomad.hcl
#
# Then talk to the master through Consul DNS (only the master carries the
# "master" tag):  curl http://master.bedrock-demo.service.consul:<port>/
# or through Traefik at http://demo.localhost/ .

job "bedrock-demo" {
  type = "service"

  # Rolling updates replace one instance at a time and wait until the new
  # one has been up long enough to finish its initial sync, so the master is
  # never replaced while no clone holds a current copy of the data.
  update {
    max_parallel     = 1
    min_healthy_time = "30s"
    healthy_deadline = "5m"
    auto_revert      = true
  }

  group "server" {
    # One master and two clones: the minimum Bedrock accepts.
    count = 3

    # Never two instances on one node: a node loss must cost one instance.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    # Prefer spreading instances across datacenters when there are several.
    spread {
      attribute = "${node.datacenter}"
    }

    # A crashed app hands the lock to the most caught-up clone at once,
    # whatever this block says; it decides when the instance comes back as
    # a clone: one quick local restart, then the allocation is replaced.
    restart {
      attempts = 1
      delay    = "2s"
      interval = "1m"
      mode     = "fail"
    }

    # Replace a failed instance quickly so the group is back to a master and
    # two clones; back off if the replacement keeps failing.
    reschedule {
      delay          = "5s"
      delay_function = "exponential"
      max_delay      = "1m"
      unlimited      = true
    }

    network {
      port "http" {
        to = 8080
      }
      # Replication between syncers (master -> clones).
      port "sync" {}
      # Prometheus metrics of the syncer.
      port "metrics" {}
    }

    # The syncer: elects the master through a Consul lock and replicates
    # /data from the master to the clones. It must start before the app and
    # keep running beside it: a prestart sidecar.
    task "syncer" {
      driver = "bedrock"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      # The replication secret (peers authenticate with it), rendered from
      # the Nomad variable into the task's environment, never into the job.
      template {
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/bedrock-demo" }}
          BEDROCK_SYNC_SECRET={{ .sync_secret }}
          {{- end }}
        EOT
        destination = "secrets/sync.env"
        env         = true
      }

      config {
        syncer {
          port         = "sync"
          metrics_port = "metrics"
          secret       = "${BEDROCK_SYNC_SECRET}"
          # mode is left to its default, "async": every write of the app is
          # captured in order through a FUSE mount, so a clone only ever holds
          # a state the master's disk passed through.
          # Consul service of the app: master.bedrock-demo.service.consul
          service = "bedrock-demo"
          # Tags only the master carries, so Traefik routes to it alone.
          tags = [
            "traefik.enable=true",
            "traefik.http.routers.bedrock-demo.rule=Host(`demo.localhost`)",
          ]
        }
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }

    # The app: its container runs only on the master, on the replicated data.
    task "app" {
      driver = "bedrock"

      config {
        image = "bedrock-demo:latest"
        ports = ["http"]
        data  = "/data"
      }

      kill_timeout = "10s"

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
