// Package cgroup finds the cgroup v2 hierarchy, where switchyard attaches
// its sockops program (the bypass cgroup) unless told another directory.
package cgroup
