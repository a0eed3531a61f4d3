defmodule Chat.Broadcast do
  @moduledoc """
  The hub that carries chat messages to every WebSocket of the cluster: one
  process per node, registered as `Chat.Broadcast`.

  A WebSocket process (`Chat.Socket`) registers with its own node's hub
  (`register/1`) and publishes each text message there (`publish/1`). The
  hub sends the message to each of its registered sockets as
  `{:broadcast, payload}`, and `{:remote, payload}` to `{Chat.Broadcast, n}`
  for each `n` in `Node.list()`; a hub delivers a `{:remote, payload}` to its
  own sockets only. So a message reaches every socket on every connected
  node once, its sender's included, in the order its sender sent it.

  The cluster is `Node.list()` and nothing else, on purpose not `:pg`: with
  `:pg` a node whose cookie its peers refuse was seen still listed by them,
  where the deploy's checks rely on such a node being isolated.

  The hub monitors each socket, to forget it when it goes, and links to it,
  so that the sockets go down with the supervision tree: the hub traps
  exits, and in `terminate/2` tells every socket to go away (each sends a
  close frame with status 1001 and closes its TCP connection, all at once),
  waits for them up to 3 s, then aborts those left (a client that stopped
  reading can hold its socket's process in a send, and its unsent bytes
  would hold the VM's halt until the send timeout). `Chat.Application`
  starts `Chat.HTTP` after the hub, so on shutdown the listener has stopped
  accepting before the sockets are closed, and their clients reconnect to
  other nodes at once.
  """
  use GenServer

  @drain_timeout 3_000

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc """
  Registers the calling process, which owns the TCP socket `socket`, as a
  WebSocket of this node: from now on it gets `{:broadcast, payload}` for
  every message published in the cluster, and `:going_away` when the node
  stops (then it must close and exit). `{:error, :unavailable}` when the
  hub is not running (the node is stopping).
  """
  def register(socket) do
    GenServer.call(__MODULE__, {:register, self(), socket})
  catch
    :exit, _ -> {:error, :unavailable}
  end

  @doc "Sends `payload` to every socket on every node of the cluster, the caller's included."
  def publish(payload) when is_binary(payload),
    do: GenServer.cast(__MODULE__, {:publish, payload})

  @impl true
  def init(_opts) do
    Process.flag(:trap_exit, true)
    # Registered sockets: pid => {monitor reference, TCP socket}.
    {:ok, %{}}
  end

  @impl true
  def handle_call({:register, pid, socket}, _from, sockets) do
    Process.link(pid)
    {:reply, :ok, Map.put(sockets, pid, {Process.monitor(pid), socket})}
  end

  @impl true
  def handle_cast({:publish, payload}, sockets) do
    deliver(sockets, payload)

    # :noconnect: a node that left Node.list() since is skipped, never
    # dialled from here.
    for n <- Node.list(), do: Process.send({__MODULE__, n}, {:remote, payload}, [:noconnect])
    {:noreply, sockets}
  end

  @impl true
  def handle_info({:remote, payload}, sockets) do
    deliver(sockets, payload)
    {:noreply, sockets}
  end

  def handle_info({:DOWN, _ref, :process, pid, _reason}, sockets) do
    {:noreply, Map.delete(sockets, pid)}
  end

  # A linked socket's exit: the monitor's :DOWN does the bookkeeping.
  def handle_info({:EXIT, _pid, _reason}, sockets), do: {:noreply, sockets}
  def handle_info(_msg, sockets), do: {:noreply, sockets}

  @impl true
  def terminate(_reason, sockets) do
    Enum.each(sockets, fn {pid, _} -> send(pid, :going_away) end)
    await(sockets, System.monotonic_time(:millisecond) + @drain_timeout)
  end

  defp deliver(sockets, payload) do
    Enum.each(sockets, fn {pid, _} -> send(pid, {:broadcast, payload}) end)
  end

  # Takes every message (exits, late publishes: the node is stopping), so
  # waiting for thousands of sockets never rescans a long mailbox.
  defp await(sockets, _deadline) when map_size(sockets) == 0, do: :ok

  defp await(sockets, deadline) do
    receive do
      {:DOWN, _ref, :process, pid, _reason} -> await(Map.delete(sockets, pid), deadline)
      _other -> await(sockets, deadline)
    after
      max(deadline - System.monotonic_time(:millisecond), 0) ->
        # linger {true, 0}: the close discards unsent bytes (and resets the
        # connection) instead of waiting for a client that does not read.
        Enum.each(sockets, fn {pid, {_ref, socket}} ->
          _ = :inet.setopts(socket, linger: {true, 0})
          Process.exit(pid, :kill)
        end)
    end
  end
end
