#!/bin/sh
# ZeroCI's init inside a job's VM, run by the image's /sbin/zeroci-init from the agent disk: sets the
# machine up, runs the agent until the job is over, then powers the VM off (qemu then exits).
#
# The controller passes what differs per machine on the kernel command line (zeroci.*) and the
# bootstrap (controller address, CA, one-time token) on the third drive, read once by the agent.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8

off() {
    sync
    echo o > /proc/sysrq-trigger
    sleep 60
}
trap off EXIT

mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run/lock 2>/dev/null

hostname=zeroci
give_up=600
source=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        zeroci.hostname=*) hostname="${arg#*=}" ;;
        zeroci.give_up=*) give_up="${arg#*=}" ;;
        zeroci.source=*) source="${arg#*=}" ;;
    esac
done
hostname "$hostname"
echo "$hostname" > /etc/hostname
printf '127.0.0.1 localhost %s\n::1 localhost\n' "$hostname" > /etc/hosts

# The overlay is larger than the image's file system: grow it to the job's disk (in the background:
# the checkout does not wait for it).
resize2fs /dev/vda > /dev/null 2>&1 &

# User-mode networking: the host (and the controller on its loopback) is 10.0.2.2, DNS 10.0.2.3.
# The one network device, whatever udev in the initramfs named it.
modprobe -q virtio_net
dev=
n=0
while [ -z "$dev" ] && [ $n -lt 1000 ]; do
    for path in /sys/class/net/*; do
        [ "${path##*/}" = lo ] || dev="${path##*/}"
    done
    [ -n "$dev" ] || sleep 0.01
    n=$((n+1))
done
ip link set lo up
ip link set "$dev" up
ip addr add 10.0.2.15/24 dev "$dev"
ip route add default via 10.0.2.2
echo "nameserver 10.0.2.3" > /etc/resolv.conf

# A repository of the host, read-only at its host path (the fourth drive).
if [ -n "$source" ]; then
    mkdir -p "$source"
    mount -o ro /dev/vdd "$source"
fi

mkdir -p /job
echo "zeroci: machine $hostname ready after $(cut -d' ' -f1 /proc/uptime)s" > /dev/console
/run/zeroci/zeroci-agent run --bootstrap-fd 3 --workdir /job --give-up-after "$give_up" \
    --shared-test-xml /test.xml 3< /dev/vdc > /dev/console 2>&1
