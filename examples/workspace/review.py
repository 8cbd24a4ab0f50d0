"""A stand-in credit-review agent: reads its workspace and reference data, writes a
report, and tries a few things a cell forbids. Every attempt's outcome is printed."""
import csv, ctypes, os, socket

def attempt(what, fn):
    try:
        fn()
        print(f"  ALLOWED  {what}")
    except Exception as e:  # the cell says no
        print(f"  DENIED   {what}: {type(e).__name__}: {e}")

print(f"agent {os.environ['AGENTSPACE_AGENT']} task {os.environ['AGENTSPACE_TASK_ID']} for {os.environ['AGENTSPACE_USER']} (uid {os.getuid()})")
attempt("read /workspace/notes.txt", lambda: open("/workspace/notes.txt").read())
rates = list(csv.DictReader(open("/mnt/reference-data/rates.csv")))
attempt("read /mnt/reference-data/rates.csv", lambda: rates)
attempt("write /workspace/report.md", lambda: open("/workspace/report.md", "w").write(
    "# Credit review\n" + "".join(f"- grade {r['grade']}: max {r['max_rate']}%\n" for r in rates)))
attempt("change reference data", lambda: open("/mnt/reference-data/rates.csv", "a").write("D,99\n"))
attempt("read the host's /etc/shadow", lambda: open("/etc/shadow").read())
attempt("connect to api.stripe.com:443", lambda: socket.create_connection(("api.stripe.com", 443), timeout=3))
attempt("connect to 1.1.1.1:443", lambda: socket.create_connection(("1.1.1.1", 443), timeout=3))
attempt("open a raw socket", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
libc = ctypes.CDLL(None, use_errno=True)

def unshare_user_namespace():
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))

attempt("create a user namespace", unshare_user_namespace)
