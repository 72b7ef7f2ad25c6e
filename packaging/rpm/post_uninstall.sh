if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    # $1 >= 1: an upgrade; a running agent restarts on the new binary.
    if [ "$1" -ge 1 ]; then
        systemctl try-restart lockstep.service || :
    fi
fi
