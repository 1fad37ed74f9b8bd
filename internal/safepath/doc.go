// Package safepath checks the directories and files that switchyardd
// trusts before it reads or creates state in them, the way OpenSSH's
// StrictModes checks a user's key files.
//
// The rule, for every path the daemon uses (control directory, label
// settings file, splice worker directory, bpffs state root and namespace
// directories, config file): the path itself is not a symlink where a
// directory or file is expected; it is owned by root or by the daemon's own
// effective uid; and no one else may write to it (no group or other write
// bit). Every directory above it, after symlinks are resolved, is owned by
// root or the daemon's uid and is writable by no one else unless it has the
// sticky bit, as /tmp does: in a sticky directory only the owner of an
// entry may rename or remove it, so a checked entry stays the one checked.
// Only the bpffs state root may itself be sticky and world-writable (a bpf
// filesystem mounted with default options is mode 1777), since what the
// daemon adopts inside it is checked entry by entry.
//
// Directories above a path may be symlinks, and so may the config file an
// operator points the daemon at (CheckFile; a Kubernetes ConfigMap volume
// links it), but only symlinks that root or the daemon's uid made are
// followed, and what they lead to is checked as above.
//
// Files are created inside a checked directory with O_CREAT|O_EXCL|
// O_NOFOLLOW relative to a descriptor of that directory and renamed into
// place (WriteFile); files are read through O_NOFOLLOW with the checks made
// on the open descriptor (ReadFile), so a symlink planted at either name is
// never followed.
//
// What it does not do: it knows nothing of what the files hold. Errors wrap
// ErrUnsafe and say what to change.
package safepath
