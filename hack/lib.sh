# Helpers shared by the hack/*/build.sh scripts (sourced; the caller defines `log` and `MODE`).

# Install the Debian packages among "$@" that are not installed yet (as root, or through sudo);
# a run that installs something is a cold one (MODE=cold).
apt_install() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    [ "${#missing[@]}" = 0 ] && return 0
    MODE=cold
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}
