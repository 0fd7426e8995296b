# Build the Stratus image for linux/amd64 and linux/arm64 with `docker buildx bake`.
# Override a variable from the environment, for example:
#   VERSION=0.2.0 REGISTRY=ghcr.io IMAGE=example/stratus docker buildx bake --push

# The package version from pyproject.toml. The Dockerfile stops the build when the two
# differ, so that the tags and labels match what `stratus --version` prints.
variable "VERSION" {
  default = "0.1.0"
}

variable "REGISTRY" {
  default = "docker.io"
}

variable "IMAGE" {
  default = "stratus/stratus"
}

# URL of the source repository, written to the org.opencontainers.image.source label.
# NOTE: empty by default because the project has no published repository URL yet.
variable "SOURCE" {
  default = ""
}

# Return the tags VERSION, MAJOR.MINOR, MAJOR and latest of registry/image. regex()
# fails the bake for a version that is not MAJOR.MINOR.PATCH (a pre-release such as
# 1.0.0-rc.1, for example), so a pre-release never moves the latest tag.
function "release_tags" {
  params = [registry, image, version]
  result = formatlist("%s/%s:%s", registry, image, [
    version,
    join(".", regex("^([0-9]+)\\.([0-9]+)\\.[0-9]+$", version)),
    regex("^([0-9]+)\\.[0-9]+\\.[0-9]+$", version)[0],
    "latest",
  ])
}

group "default" {
  targets = ["stratus"]
}

target "stratus" {
  context    = "."
  dockerfile = "Dockerfile"
  platforms  = ["linux/amd64", "linux/arm64"]
  tags       = release_tags(REGISTRY, IMAGE, VERSION)
  args = {
    VERSION = VERSION
    SOURCE  = SOURCE
  }
  labels = {
    "org.opencontainers.image.source"  = SOURCE
    "org.opencontainers.image.version" = VERSION
  }
}
