// Package splice owns the splice proxies of a namespace's labels: a Proxy
// holds a label's listening sockets, dials the upstream for each
// connection it accepts, and moves bytes both ways with splice(2) through
// a pipe, propagating half-close and reset; or it hands the two sockets to
// a Kernel (the in-kernel engine, package kernelsplice). With
// Config.Workers, proxies that splice in userspace run in worker
// processes that outlive the daemon; the daemon finds, adopts, drains and
// stops them through their control sockets (a line-based request, a JSON
// status answer). StopWorkers ends them all, for unload.
//
// This package holds no BPF object and decides no policy: package policy
// says which labels are spliced and with what engine, and package dispatch
// owns the label's sockets once registered.
package splice
