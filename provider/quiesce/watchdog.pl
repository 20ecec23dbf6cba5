#!/usr/bin/env perl
# pulumi-quiesce watchdog, perl port of watchdog.py (same behaviour, same protocol, same files), for hosts
# that have perl but no python3 (DESIGN.md, "The lease and the watchdog"). Core modules only.
#
# It ends every freeze whose owner can no longer end it:
#   - at the lease deadline (expiresAt), for every lease file in the directory;
#   - when a holder's channel closes without DISARM (thawOnDisconnect): the process that froze is gone.
# It thaws a guest only if the lease still names the window it is acting for, and it reads the lease only
# while it holds the guest's agent channel (the chardev serves one client at a time), so it can never race
# a create or a release of another window. It records how each window ended in <lease>.ended.json.
#
# Protocol on <dir>/watchdog.sock, one line per message:
#   PING                    -> PONG <version>
#   HOLD <windowId> <file>  -> OK      (this connection holds the window; <file> is the lease file name)
#   DISARM <windowId>       -> OK      (released by its owner: closing the connection no longer thaws)
#   BEAT                    -> nothing (a holder's heartbeat; a holder silent for $HOLD_SILENCE s is gone)
# Started with --foreground for tests; otherwise it daemonizes after binding and prints READY first.
use strict;
use warnings;

use Errno ();
use File::Path qw(make_path);
use File::Spec;
use IO::Handle;
use IO::Select;
use IO::Socket::UNIX;
use JSON::PP;
use POSIX ();
use Scalar::Util qw(looks_like_number);
use Socket ();
use Time::HiRes ();
use Time::Local qw(timegm);

my $VERSION = "2";
my $SCAN_INTERVAL = 0.1;    # seconds between lease scans: the deadline is honoured within this plus the thaw
my $AGENT_TIMEOUT = 10.0;   # seconds to get an agent sync or reply
my $IDLE_EXIT = 60.0;       # exit after this long with no lease and no holder
my $HOLD_SILENCE = 15.0;    # seconds without a byte from a holder (it beats every 2 s) before it counts as gone
my $RETRY_MAX = 5.0;        # seconds: a failing thaw is retried with backoff up to this interval

my $JSON = JSON::PP->new->utf8->canonical;

sub now { return Time::HiRes::time() }

sub utc_stamp { return POSIX::strftime("%Y-%m-%dT%H:%M:%SZ", gmtime()) }

# Appends one line to <dir>/watchdog.log. Never dies: a log that cannot be written must not stop thawing.
sub log_line {
    my ($dir, $msg) = @_;
    if (open(my $f, '>>', File::Spec->catfile($dir, "watchdog.log"))) {
        print {$f} utc_stamp() . " $msg\n";
        close($f);
    } else {
        # Already open, needs no descriptor (/dev/null once daemonized).
        print STDERR utc_stamp() . " $msg\n";
    }
    return;
}

# The JSON object in a file, or undef when it is missing, unreadable, not JSON or not an object.
sub read_json {
    my ($path) = @_;
    open(my $f, '<:raw', $path) or return undef;
    local $/;
    my $text = <$f>;
    close($f);
    return undef unless defined $text;
    my $value = eval { $JSON->decode($text) };
    return ref($value) eq 'HASH' ? $value : undef;
}

sub write_json_atomic {
    my ($path, $value) = @_;
    my $tmp = "$path.$$.tmp";
    my $text = $JSON->encode($value) . "\n";
    open(my $f, '>:raw', $tmp) or die "cannot write $tmp: $!\n";
    print {$f} $text or die "cannot write $tmp: $!\n";
    close($f) or die "cannot write $tmp: $!\n";
    rename($tmp, $path) or die "cannot rename $tmp: $!\n";
    return;
}

# ISO 8601 UTC as written by the lifecycle: 2026-11-26T06:15:43.123Z. Dies on anything else.
sub parse_time {
    my ($s) = @_;
    die "not a string\n" if !defined($s) || ref($s);
    my ($y, $mo, $d, $h, $mi, $sec, $frac) =
        $s =~ /\A(\d{4})-(\d{1,2})-(\d{1,2})T(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d+))?Z*\z/
        or die "not an ISO 8601 UTC time\n";
    # timegm, not POSIX::mktime: mktime reads the fields as local time.
    my $t = timegm($sec, $mi, $h, $d, $mo - 1, $y);
    return $t + (defined $frac ? "0.$frac" : 0);
}

# Whether a lease (a hash or undef) names window $id.
sub names_window {
    my ($lease, $id) = @_;
    return $lease && defined($lease->{windowId}) && !ref($lease->{windowId}) && $lease->{windowId} eq $id;
}

# ---------------------------------------------------------------------------------------------------------
# A minimal QGA client: 0xFF + guest-sync-delimited, then one command at a time (AGENT-FACTS.md).
package QuiesceAgent;

sub new {
    my ($class, $path) = @_;
    my $sock = IO::Socket::UNIX->new(Type => Socket::SOCK_STREAM(), Peer => $path, Timeout => $AGENT_TIMEOUT)
        or die "cannot connect to the agent at $path: " . ($! || $@) . "\n";
    binmode($sock);
    return bless { sock => $sock, buf => "" }, $class;
}

sub close {
    my ($self) = @_;
    CORE::close($self->{sock}) if $self->{sock};
    $self->{sock} = undef;
    return;
}

sub _send {
    my ($self, $bytes, $deadline) = @_;
    my $sel = IO::Select->new($self->{sock});
    while (length $bytes) {
        my $remaining = $deadline - main::now();
        die "agent did not accept the command\n" if $remaining <= 0;
        next unless $sel->can_write($remaining);
        my $n = syswrite($self->{sock}, $bytes);
        if (!defined $n) {
            next if $! == Errno::EINTR() || $! == Errno::EAGAIN() || $! == Errno::EWOULDBLOCK();
            die "agent channel write failed: $!\n";
        }
        substr($bytes, 0, $n) = "";
    }
    return;
}

sub _line {
    my ($self, $deadline) = @_;
    my $sel = IO::Select->new($self->{sock});
    while (index($self->{buf}, "\n") < 0) {
        my $remaining = $deadline - main::now();
        die "agent did not answer\n" if $remaining <= 0;
        next unless $sel->can_read($remaining);
        my $n = sysread($self->{sock}, my $chunk, 65536);
        if (!defined $n) {
            next if $! == Errno::EINTR() || $! == Errno::EAGAIN() || $! == Errno::EWOULDBLOCK();
            die "agent channel read failed: $!\n";
        }
        die "agent channel closed\n" if $n == 0;
        $self->{buf} .= $chunk;
    }
    my $nl = index($self->{buf}, "\n");
    my $line = substr($self->{buf}, 0, $nl);
    substr($self->{buf}, 0, $nl + 1) = "";
    return $line;
}

sub sync {
    my ($self) = @_;
    my $sync_id = 1 + int(rand(2**31 - 2));
    my $deadline = main::now() + $AGENT_TIMEOUT;
    $self->_send("\xff" . $JSON->encode({ execute => "guest-sync-delimited", arguments => { id => $sync_id } }) . "\n", $deadline);
    $deadline = main::now() + $AGENT_TIMEOUT;
    while (1) {
        my $line = $self->_line($deadline);
        my $at = rindex($line, "\xff");
        next if $at < 0;
        my $reply = eval { $JSON->decode(substr($line, $at + 1)) };
        # A stale or partial line: keep discarding until our own reply.
        next unless ref($reply) eq 'HASH';
        my $r = $reply->{return};
        return if defined($r) && !ref($r) && main::looks_like_number($r) && $r == $sync_id;
    }
}

sub execute {
    my ($self, $command) = @_;
    $self->_send($JSON->encode({ execute => $command }) . "\n", main::now() + $AGENT_TIMEOUT);
    my $line = $self->_line(main::now() + $AGENT_TIMEOUT);
    my $reply = eval { $JSON->decode($line) };
    die "$command: the agent's reply is not a JSON object\n" unless ref($reply) eq 'HASH';
    if (exists $reply->{error}) {
        my $desc = ref($reply->{error}) eq 'HASH' ? $reply->{error}{desc} : undef;
        die "$command: the agent replied an error: " . (defined $desc ? $desc : "(no description)") . "\n";
    }
    return $reply->{return};
}

# ---------------------------------------------------------------------------------------------------------
package QuiesceWatchdog;

use Errno qw(EADDRINUSE EAGAIN EINTR EWOULDBLOCK);
use Socket qw(AF_UNIX SOCK_STREAM pack_sockaddr_un);

sub new {
    my ($class, $dir) = @_;
    return bless {
        dir       => $dir,
        sock_path => File::Spec->catfile($dir, "watchdog.sock"),
        conns     => {},    # key -> connection
        holders   => {},    # key -> {windowId => leaseFile}
        buffers   => {},    # key -> bytes not yet split into lines
        last_seen => {},    # key -> time of its last byte
        pending   => {},    # lease file -> window id, disconnect thaws to retry
        in_flight => {},    # lease file -> pid of the child process thawing it
        children  => {},    # pid -> [lease file, window id, how]
        retry_at  => {},    # lease file -> [next attempt time, current backoff]
        server    => undef,
        last_busy => main::now(),
    }, $class;
}

# The listening socket, or undef when another watchdog serves this directory.
sub bind_socket {
    my ($self) = @_;
    my $path = $self->{sock_path};
    my $addr = pack_sockaddr_un($path);
    socket(my $server, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!\n";
    if (!bind($server, $addr)) {
        die "cannot bind $path: $!\n" unless $! == EADDRINUSE;
        socket(my $probe, AF_UNIX, SOCK_STREAM, 0) or die "socket: $!\n";
        if (connect($probe, $addr)) {
            CORE::close($probe);
            CORE::close($server);
            return undef;    # another watchdog serves this directory
        }
        CORE::close($probe);
        unlink($path);    # stale socket of a dead watchdog
        bind($server, $addr) or die "cannot bind $path: $!\n";
    }
    chmod(0600, $path);
    listen($server, 128) or die "cannot listen on $path: $!\n";
    $server->blocking(0);
    $self->{sock_ino} = (stat($path))[1];
    return $server;
}

# Thaws the guest of $lease_file if its lease still names $window_id; records how the window ended.
# Returns true when nothing is left to do, false when the thaw must be retried.
sub end_window {
    my ($self, $lease_file, $window_id, $how) = @_;
    my $path = File::Spec->catfile($self->{dir}, $lease_file);
    my $lease = main::read_json($path);
    return 1 unless main::names_window($lease, $window_id);
    my $agent;
    my $done = eval {
        my $socket_path = $lease->{socketPath};
        die "the lease has no socketPath\n" if !defined($socket_path) || ref($socket_path);
        $agent = QuiesceAgent->new($socket_path);
        $agent->sync();
        # Re-read under the agent channel: nobody else can change the guest's freeze meanwhile.
        return 1 unless main::names_window(main::read_json($path), $window_id);
        # qemu-ga thaws and clears its flag first, then runs the fsfreeze hook with "thaw" (qmp_guest_fsfreeze_thaw);
        # on Windows it reports that VSS had let the writes resume. So an error reply may come with the guest
        # thawed: the status below decides (only a transport failure ends this attempt here).
        my $thawed = eval { $agent->execute("guest-fsfreeze-thaw") };
        my $thaw_err = $@;
        die $thaw_err if $thaw_err && $thaw_err !~ /^guest-fsfreeze-thaw: the agent replied an error: /;
        main::log_line($self->{dir}, "window $window_id: the thaw replied an error, checking the status: $thaw_err") if $thaw_err;
        my $status = $agent->execute("guest-fsfreeze-status");
        # Only a verified thaw ends the window; otherwise the lease stays and the thaw is retried.
        die sprintf("status is %s after the thaw\n", show($status)) if !defined($status) || ref($status) || $status ne "thawed";
        (my $ended = $path) =~ s/\.json\z/.ended.json/;
        unlink($path);
        main::write_json_atomic($ended, {
            windowId => $window_id, how => $how, at => main::utc_stamp(), thawedCount => $thawed, status => $status,
        });
        main::log_line($self->{dir}, sprintf("window %s ended (%s): thawed %s, status %s",
            $window_id, $how, show($thawed), show($status)));
        1;
    };
    my $err = $@;
    $agent->close() if $agent;
    return 1 if $done;
    chomp($err = $err || "unknown error");
    # Logged, and retried on the next scan while the lease remains.
    main::log_line($self->{dir}, "window $window_id: thaw ($how) failed, will retry: $err");
    return 0;
}

# A JSON value for the log, without touching the value itself (so it stays a number in the ended record).
sub show {
    my ($v) = @_;
    return "None" unless defined $v;
    return ref($v) ? $JSON->encode($v) : $JSON->encode([$v]) =~ s/\A\[|\]\z//gr;
}

# Schedules a thaw in a child process (one per lease at a time), so a silent agent delays no other guest.
sub owe {
    my ($self, $lease_file, $window_id, $how) = @_;
    my $now = main::now();
    my $due = $self->{retry_at}{$lease_file} ? $self->{retry_at}{$lease_file}[0] : 0;
    if ($self->{in_flight}{$lease_file} || $due > $now) {
        $self->{pending}{$lease_file} //= $window_id if $how eq "disconnected";
        return;
    }
    delete $self->{pending}{$lease_file};
    my $pid = fork();
    if (!defined $pid) {
        main::log_line($self->{dir}, "window $window_id: cannot fork a thaw ($!), will retry");
        $self->failed($lease_file, $window_id, $how);
        return;
    }
    if ($pid == 0) {
        # The child only thaws: it lets go of the daemon's sockets, so clients see the daemon's closes.
        CORE::close($_) for grep { defined } ($self->{server}, values %{ $self->{conns} });
        POSIX::_exit($self->end_window($lease_file, $window_id, $how) ? 0 : 1);
    }
    $self->{in_flight}{$lease_file} = $pid;
    $self->{children}{$pid} = [$lease_file, $window_id, $how];
    return;
}

# A thaw that must be tried again: back off, and keep owing a disconnect (an expiry is found again by the scan).
sub failed {
    my ($self, $lease_file, $window_id, $how) = @_;
    my $backoff = $self->{retry_at}{$lease_file} ? $self->{retry_at}{$lease_file}[1] : 0;
    $backoff = $backoff * 2 < 0.2 ? 0.2 : ($backoff * 2 > $RETRY_MAX ? $RETRY_MAX : $backoff * 2);
    $self->{retry_at}{$lease_file} = [main::now() + $backoff, $backoff];
    $self->{pending}{$lease_file} //= $window_id if $how eq "disconnected";
    return;
}

# Collects finished thaw children.
sub reap {
    my ($self) = @_;
    while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
        my $job = delete $self->{children}{$pid} or next;
        my ($lease_file, $window_id, $how) = @$job;
        delete $self->{in_flight}{$lease_file};
        if ($? == 0) {
            delete $self->{retry_at}{$lease_file};
        } else {
            $self->failed($lease_file, $window_id, $how);
        }
    }
    return;
}

sub has_lease {
    my ($self) = @_;
    opendir(my $dh, $self->{dir}) or return 0;
    my $found = grep { /\A[0-9a-f]{32}\.json\z/ } readdir($dh);
    closedir($dh);
    return $found;
}

sub scan {
    my ($self) = @_;
    my $now = main::now();
    my $any_lease = 0;
    # Thaws owed to holders that went away but could not be done yet (agent busy or not answering).
    $self->owe($_, $self->{pending}{$_}, "disconnected") for sort keys %{ $self->{pending} };
    opendir(my $dh, $self->{dir}) or return;
    my @names = sort grep { /\.json\z/ && !/\.ended\.json\z/ } readdir($dh);
    closedir($dh);
    for my $name (@names) {
        my $lease = main::read_json(File::Spec->catfile($self->{dir}, $name));
        next if !$lease || !exists $lease->{expiresAt};
        $any_lease = 1;
        # The deadline is enforced on this host's clock: the lease's length (from the record) after the lease file
        # was written here (its mtime), so a skewed clock on the client can neither stretch nor cut the freeze.
        my $expires = eval {
            my $length = main::parse_time($lease->{expiresAt}) - main::parse_time($lease->{frozenAt});
            my $written = (Time::HiRes::stat(File::Spec->catfile($self->{dir}, $name)))[9];
            die "removed\n" unless defined $written;
            $written + ($length > 0 ? $length : 0);
        };
        if (!defined $expires) {
            main::log_line($self->{dir}, sprintf("lease %s has a bad frozenAt %s or expiresAt %s (or was removed)",
                $name, show($lease->{frozenAt}), show($lease->{expiresAt})));
            next;
        }
        my $window_id = $lease->{windowId};
        if (!defined($window_id) || ref($window_id)) {
            main::log_line($self->{dir}, "lease $name has no windowId");
            next;
        }
        $self->owe($name, $window_id, "expired") if $expires <= $now;
    }
    $self->{last_busy} = $now
        if $any_lease || %{ $self->{holders} } || %{ $self->{pending} } || %{ $self->{in_flight} };
    return;
}

sub reply {
    my ($conn, $text) = @_;
    # A client that went away is noticed by the read side (EOF), which also does what its leaving means.
    syswrite($conn, $text);
    return;
}

sub on_line {
    my ($self, $key, $line) = @_;
    my $conn = $self->{conns}{$key};
    my @parts = split ' ', $line;
    return unless @parts;
    if ($parts[0] eq "PING") {
        reply($conn, "PONG $VERSION\n");
    } elsif ($parts[0] eq "HOLD" && @parts == 3 && index($parts[2], "/") < 0) {
        $self->{holders}{$key}{ $parts[1] } = $parts[2];
        reply($conn, "OK\n");
    } elsif ($parts[0] eq "DISARM" && @parts == 2) {
        delete $self->{holders}{$key}{ $parts[1] } if $self->{holders}{$key};
        reply($conn, "OK\n");
    } elsif ($parts[0] eq "BEAT") {
        # its arrival is what counts (last_seen)
    } else {
        reply($conn, "ERR unknown command\n");
    }
    return;
}

sub drop {
    my ($self, $key) = @_;
    my $windows = delete($self->{holders}{$key}) || {};
    delete $self->{buffers}{$key};
    delete $self->{last_seen}{$key};
    my $conn = delete $self->{conns}{$key};
    CORE::close($conn) if $conn;
    for my $window_id (sort keys %$windows) {
        $self->owe($windows->{$window_id}, $window_id, "disconnected");
    }
    return;
}

sub serve {
    my ($self, $server) = @_;
    $self->{server} = $server;
    my $sel = IO::Select->new($server);
    while (1) {
        # Serving clients never stops the watchdog: whatever fails is logged, and leases are still enforced.
        main::log_line($self->{dir}, "serving clients failed: " . ($@ || "unknown error")) unless eval {
            if ($self->{accept_paused_until} && main::now() >= $self->{accept_paused_until}) {
                $self->{accept_paused_until} = 0;
                $sel->add($server);
            }
            my @readable = $sel->can_read($SCAN_INTERVAL);
            for my $r (@readable) {
                if ($r == $server) {
                    my $conn;
                    if (!accept($conn, $server)) {
                        next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
                        # Out of file descriptors (EMFILE, ENFILE) or the like: pause accepting, keep enforcing leases.
                        main::log_line($self->{dir}, "cannot accept a client ($!); pausing accepts for 1 s");
                        $sel->remove($server);
                        $self->{accept_paused_until} = main::now() + 1;
                        next;
                    }
                    $conn->blocking(1);
                    binmode($conn);
                    $self->{conns}{"$conn"} = $conn;
                    $self->{buffers}{"$conn"} = "";
                    $sel->add($conn);
                    next;
                }
                my $key = "$r";
                my $n = sysread($r, my $data, 4096);
                next if !defined($n) && ($! == EINTR || $! == EAGAIN || $! == EWOULDBLOCK);
                if (!$n) {
                    $sel->remove($r);
                    $self->drop($key);
                    next;
                }
                $self->{last_seen}{$key} = main::now();
                $self->{buffers}{$key} .= $data;
                while ((my $nl = index($self->{buffers}{$key}, "\n")) >= 0) {
                    my $line = substr($self->{buffers}{$key}, 0, $nl);
                    substr($self->{buffers}{$key}, 0, $nl + 1) = "";
                    $self->on_line($key, $line);
                }
            }
            # A crashed or hung client machine closes no connection (sshd keeps its channel): silence ends a hold.
            my $now = main::now();
            for my $key (grep { $now - ($self->{last_seen}{$_} // $now) > $HOLD_SILENCE } keys %{ $self->{holders} }) {
                main::log_line($self->{dir}, "a holder of " . join(",", sort keys %{ $self->{holders}{$key} }) .
                    " sent nothing for $HOLD_SILENCE s: treating it as gone");
                $sel->remove($self->{conns}{$key}) if $self->{conns}{$key};
                $self->drop($key);
            }
            1;
        };
        $self->reap();
        return unless -d $self->{dir};    # the lease directory was removed: nothing left to watch
        # A scan never stops the watchdog: whatever failed is logged and tried again on the next one.
        main::log_line($self->{dir}, "scan failed: " . ($@ || "unknown error")) unless eval { $self->scan(); 1 };
        if (!%{ $self->{conns} } && main::now() - $self->{last_busy} > $IDLE_EXIT) {
            my @st = stat($self->{sock_path});
            unlink($self->{sock_path}) if @st && $st[1] == $self->{sock_ino};    # only our own socket
            # A lease written while we were deciding to leave must not go unwatched.
            if ($self->has_lease()) {
                main::log_line($self->{dir}, "lease appeared during idle exit; staying");
                $sel->remove($server);
                CORE::close($server);
                $server = $self->bind_socket();
                return unless $server;    # a newer watchdog serves the directory
                $self->{server} = $server;
                $sel->add($server);
                $self->{last_busy} = main::now();
                next;
            }
            main::log_line($self->{dir}, "idle, exiting");
            return;
        }
    }
}

# ---------------------------------------------------------------------------------------------------------
package main;

sub main {
    my @args = grep { !/\A--/ } @ARGV;
    my $foreground = grep { $_ eq "--foreground" } @ARGV;
    my $dir = $args[0];
    if (!defined $dir) {
        print STDERR "usage: watchdog.pl DIR [--foreground]\n";
        exit 2;
    }
    $SIG{PIPE} = 'IGNORE';    # a client that went away must not kill the watchdog
    STDOUT->autoflush(1);
    make_path($dir, { mode => 0700 }) unless -d $dir;
    die "cannot create $dir\n" unless -d $dir;
    my $w = QuiesceWatchdog->new($dir);
    my $server = $w->bind_socket();
    if (!$server) {
        print "READY already-running\n";
        return;
    }
    if (!$foreground) {
        # Detach: survive the SSH session that started us (new session, no controlling terminal).
        my $pid = fork();
        die "fork: $!\n" unless defined $pid;
        if ($pid > 0) {
            print "READY started\n";
            POSIX::_exit(0);
        }
        POSIX::setsid();
        $SIG{HUP} = 'IGNORE';
        $pid = fork();
        POSIX::_exit(1) unless defined $pid;
        POSIX::_exit(0) if $pid > 0;
        my $devnull = POSIX::open(File::Spec->devnull, POSIX::O_RDWR());
        POSIX::dup2($devnull, $_) for 0, 1, 2;
        POSIX::close($devnull) if $devnull > 2;
    } else {
        print "READY foreground\n";
    }
    log_line($dir, "watchdog $VERSION (perl) serving $dir (pid $$)");
    $w->serve($server);
    return;
}

# An error before the daemon serves exits 1 with its message on stderr (never a code the client reads as
# "no interpreter").
if (!eval { main(); 1 }) {
    print STDERR "watchdog: " . ($@ || "unknown error");
    exit 1;
}
