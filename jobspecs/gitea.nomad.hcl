# Gitea on Bedrock: repositories, attachments and the SQLite database in
# /data stay available when the node running Gitea goes away.
#
# Before the first run:
#
#   nomad var put nomad/jobs/gitea sync_secret="$(openssl rand -hex 32)"
#   nomad-driver-bedrock validate gitea.nomad.hcl
#   nomad job run gitea.nomad.hcl
#
# Web UI through Traefik at http://git.localhost/ ; git over SSH at
# master.gitea.service.consul on the "ssh" port.

job "gitea" {
  type = "service"

  update {
    max_parallel     = 1
    min_healthy_time = "30s"
    healthy_deadline = "5m"
    auto_revert      = true
  }

  group "server" {
    count = 3

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    spread {
      attribute = "${node.datacenter}"
    }

    restart {
      attempts = 1
      delay    = "2s"
      interval = "1m"
      mode     = "fail"
    }

    reschedule {
      delay          = "5s"
      delay_function = "exponential"
      max_delay      = "1m"
      unlimited      = true
    }

    network {
      port "http" {
        to = 3000
      }
      port "ssh" {
        to = 22
      }
      port "sync" {}
      port "metrics" {}
    }

    task "syncer" {
      driver = "bedrock"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      template {
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/gitea" }}
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
          service      = "gitea"
          tags = [
            "traefik.enable=true",
            "traefik.http.routers.gitea.rule=Host(`git.localhost`)",
          ]
        }
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }

    task "app" {
      driver = "bedrock"

      config {
        image = "gitea/gitea:1.22"
        ports = ["http", "ssh"]
        data  = "/data"
        env = {
          USER_UID = "1000"
          USER_GID = "1000"
          # Everything Gitea keeps, SQLite included, lives under /data, the
          # replicated directory.
          GITEA__database__DB_TYPE = "sqlite3"
          GITEA__database__PATH    = "/data/gitea/gitea.db"
          # WAL keeps SQLite's writes as appends to a few files, cheap to
          # replicate; checkpoints fold them back into the database.
          GITEA__database__SQLITE_JOURNAL_MODE = "WAL"
          GITEA__server__ROOT_URL              = "http://git.localhost/"
          GITEA__server__SSH_PORT              = "22"
        }
      }

      kill_timeout = "20s"

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
