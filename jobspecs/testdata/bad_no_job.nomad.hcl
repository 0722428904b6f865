variable "image" {
  default = "shop:1"
}
