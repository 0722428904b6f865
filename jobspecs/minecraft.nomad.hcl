# Minecraft (Java edition) on Bedrock: the world survives the loss of the
# node that runs the server.
#
# Image: itzg/minecraft-server. The world lives in /data.
#
# Before the first run, store the replication secret in a Nomad variable the
# job can read (workload identity gives it access to nomad/jobs/minecraft):
#
#   nomad var put nomad/jobs/minecraft sync_secret="$(openssl rand -hex 32)"
#   nomad-driver-bedrock validate minecraft.nomad.hcl
#   nomad job run minecraft.nomad.hcl
#
# Players connect to master.minecraft.service.consul (or through Traefik's
# "minecraft" TCP entrypoint).

variable "image" {
  type        = string
  description = "Minecraft server image; pin the tag you tested."
  default     = "itzg/minecraft-server:java21"
}

variable "memory" {
  type        = number
  description = "Memory of the server in MiB; the JVM gets a little less."
  default     = 4096
}

job "minecraft" {
  type = "service"

  # One instance at a time, and only once the replacement had time to copy
  # the world: a world can take a while to sync the first time.
  update {
    max_parallel     = 1
    min_healthy_time  = "1m"
    healthy_deadline  = "10m"
    # Nomad refuses a progress deadline that is not longer than the healthy deadline
    # (its default is 10m).
    progress_deadline = "15m"
    auto_revert       = true
  }

  group "server" {
    # A master and two clones on three different nodes.
    count = 3

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    spread {
      attribute = "${node.datacenter}"
    }

    # A crashed app hands the lock to the most caught-up clone at once,
    # whatever this block says; it decides when the instance comes back as
    # a clone: one quick local restart, then the allocation is replaced.
    restart {
      attempts = 1
      delay    = "2s"
      interval = "2m"
      mode     = "fail"
    }

    reschedule {
      delay          = "10s"
      delay_function = "exponential"
      max_delay      = "2m"
      unlimited      = true
    }

    network {
      port "game" {
        to = 25565
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

      # The replication secret, read from the Nomad variable and handed to
      # the syncer through the task environment.
      template {
        data        = <<-EOT
          {{- with nomadVar "nomad/jobs/minecraft" }}
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
          service      = "minecraft"
          # Traefik TCP routing to the master only.
          tags = [
            "traefik.enable=true",
            "traefik.tcp.routers.minecraft.rule=HostSNI(`*`)",
            "traefik.tcp.routers.minecraft.entrypoints=minecraft",
          ]
        }
      }

      resources {
        cpu    = 300
        memory = 256
      }
    }

    task "app" {
      driver = "bedrock"

      config {
        image = var.image
        ports = ["game"]
        data  = "/data"
        env = {
          EULA        = "TRUE"
          TYPE        = "VANILLA"
          MEMORY      = "3G"
          ENABLE_RCON = "true"
        }
      }

      # Give the server time to save the world on stop.
      kill_signal  = "SIGTERM"
      kill_timeout = "60s"

      resources {
        cpu    = 2000
        memory = var.memory
      }
    }
  }
}
