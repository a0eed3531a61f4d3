defmodule Chat.Cluster do
  @moduledoc """
  Keeps this node connected to its peers.

  The peers come from the application env `:peers`, which the per-node
  `releases/vm.args` sets (`-chat peers ['chat@10.0.1.11','chat@10.0.2.11']`,
  rendered from `deploy/vm.args.tmpl`). Every second each peer that is not
  in `Node.list()` gets a `Node.connect/1`, in its own process so that an
  unreachable peer (connect timeout) never delays the others. This joins the
  cluster at boot and heals it after a partition or a peer's restart.
  """
  use GenServer
  require Logger

  @interval 1_000

  def start_link(opts), do: GenServer.start_link(__MODULE__, opts, name: __MODULE__)

  @doc "The configured peers (atoms), without this node."
  def peers do
    :chat
    |> Application.get_env(:peers, [])
    |> List.wrap()
    |> Enum.map(&to_node/1)
    |> Enum.reject(&(&1 == node()))
    |> Enum.uniq()
  end

  defp to_node(name) when is_atom(name), do: name
  defp to_node(name) when is_binary(name), do: String.to_atom(name)
  defp to_node(name) when is_list(name), do: List.to_atom(name)

  @impl true
  def init(_opts) do
    send(self(), :tick)
    {:ok, %{connecting: %{}}}
  end

  @impl true
  def handle_info(:tick, state) do
    Process.send_after(self(), :tick, @interval)

    if Node.alive?() do
      connected = MapSet.new(Node.list())

      connecting =
        peers()
        |> Enum.reject(&(MapSet.member?(connected, &1) or Map.has_key?(state.connecting, &1)))
        |> Enum.reduce(state.connecting, fn peer, acc ->
          {_pid, ref} = spawn_monitor(fn -> exit({:connect, Node.connect(peer)}) end)
          Map.put(acc, peer, ref)
        end)

      {:noreply, %{state | connecting: connecting}}
    else
      {:noreply, state}
    end
  end

  def handle_info({:DOWN, ref, :process, _pid, reason}, state) do
    case Enum.find(state.connecting, fn {_peer, r} -> r == ref end) do
      {peer, _} ->
        if reason == {:connect, true}, do: Logger.info("chat: connected to #{peer}")
        {:noreply, %{state | connecting: Map.delete(state.connecting, peer)}}

      nil ->
        {:noreply, state}
    end
  end

  def handle_info(_msg, state), do: {:noreply, state}
end
