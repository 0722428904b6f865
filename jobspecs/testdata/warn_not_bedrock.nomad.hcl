job "web" {
  group "web" {
    task "web" {
      driver = "docker"
      config {
        image = "busybox:1"
      }
    }
  }
}
