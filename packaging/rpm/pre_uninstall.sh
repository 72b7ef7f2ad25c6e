# $1 = 0: the package is being erased (not upgraded). The config (%config(noreplace))
# and /var/lib/lockstep stay.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now lockstep.service || :
fi
