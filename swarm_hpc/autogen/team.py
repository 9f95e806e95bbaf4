"""`ParallelConversation`: an AutoGen AgentChat team in which every round all agents answer at the same time.

In round k every participant is asked at once (AgentChat's group chat manager may select several speakers),
so agents whose model clients await a remote reply (MPIExpertClient) generate in parallel. A participant
sees, at its turn in round k, every answer of round k-1 from the others (and its own history): answers of
round k reach the others only after the round, because each participant container handles its messages in
order and all round-k requests are queued before any round-k answer is published.

The termination condition is checked once per round, over all answers of the round (a stop word from any
agent ends the conversation after the round is complete); `max_rounds` bounds the rounds. `run()` and
`run_stream()` are AgentChat's own and return a `TaskResult`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autogen_agentchat.base import ChatAgent, Team, TerminationCondition
from autogen_agentchat.messages import BaseAgentEvent, BaseChatMessage, MessageFactory
from autogen_agentchat.teams import BaseGroupChat
from autogen_agentchat.teams._group_chat._base_group_chat_manager import BaseGroupChatManager
from autogen_agentchat.teams._group_chat._events import (
    GroupChatAgentResponse,
    GroupChatTeamResponse,
    GroupChatTermination,
    SerializableException,
)
from autogen_core import AgentRuntime, MessageContext, event


class ParallelConversationManager(BaseGroupChatManager):
    """Selects every participant for every round and applies termination to whole rounds."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._round_delta: list[BaseAgentEvent | BaseChatMessage] = []
        self.rounds_done = 0

    async def validate_group_state(self, messages: list[BaseChatMessage] | None) -> None:
        pass

    async def reset(self) -> None:
        self._current_turn = 0
        self._message_thread.clear()
        self._round_delta = []
        self._active_speakers = []
        self.rounds_done = 0
        if self._termination_condition is not None:
            await self._termination_condition.reset()

    async def save_state(self) -> Mapping[str, Any]:
        return {"type": "ParallelConversationManagerState", "version": "1.0",
                "message_thread": [m.dump() for m in self._message_thread], "current_turn": self._current_turn}

    async def load_state(self, state: Mapping[str, Any]) -> None:
        self._message_thread = [self._message_factory.create(m) for m in state.get("message_thread", [])]
        self._current_turn = int(state.get("current_turn", 0))

    async def select_speaker(self, thread: Sequence[BaseAgentEvent | BaseChatMessage]) -> list[str]:
        return list(self._participant_names)

    @event
    async def handle_agent_response(  # type: ignore[override]  # owner type: this manager, as in AgentChat's teams
            self, message: GroupChatAgentResponse | GroupChatTeamResponse, ctx: MessageContext) -> None:
        try:
            delta: list[BaseAgentEvent | BaseChatMessage] = []
            if isinstance(message, GroupChatAgentResponse):
                delta.extend(message.response.inner_messages or [])
                delta.append(message.response.chat_message)
            else:
                delta.extend(message.result.messages)
            await self.update_message_thread(delta)
            self._round_delta.extend(delta)
            self._active_speakers.remove(message.name)
            if self._active_speakers:  # the round is not complete yet
                return
            round_delta, self._round_delta = self._round_delta, []
            self.rounds_done += 1
            if await self._apply_termination_condition(round_delta, increment_turn_count=True):
                return
            await self._transition_to_next_speakers(ctx.cancellation_token)
        except Exception as e:
            await self._signal_termination_with_error(SerializableException.from_exception(e))
            raise


class ParallelConversation(BaseGroupChat):
    """A team whose participants all answer in every round, in parallel.

    Args:
        participants: the agents (or teams); names must be unique.
        termination_condition: checked after each round over all of the round's messages.
        max_rounds: stop after this many rounds (None: until the termination condition says so).
    """

    DEFAULT_NAME = "ParallelConversation"
    DEFAULT_DESCRIPTION = "A team whose agents answer every round at the same time, each seeing the last round."

    def __init__(self, participants: list[ChatAgent | Team], *, termination_condition: TerminationCondition | None = None,
                 max_rounds: int | None = None, name: str | None = None, description: str | None = None,
                 runtime: AgentRuntime | None = None,
                 custom_message_types: list[type[BaseAgentEvent | BaseChatMessage]] | None = None,
                 emit_team_events: bool = False) -> None:
        if termination_condition is None and max_rounds is None:
            raise ValueError("give a termination_condition or max_rounds, or the conversation never ends")
        super().__init__(name=name or self.DEFAULT_NAME, description=description or self.DEFAULT_DESCRIPTION,
                         participants=participants, group_chat_manager_name="ParallelConversationManager",
                         group_chat_manager_class=ParallelConversationManager,
                         termination_condition=termination_condition, max_turns=max_rounds, runtime=runtime,
                         custom_message_types=custom_message_types, emit_team_events=emit_team_events)

    @property
    def participant_names(self) -> list[str]:
        return list(self._participant_names)

    def _create_group_chat_manager_factory(
        self, name: str, group_topic_type: str, output_topic_type: str, participant_topic_types: list[str],
        participant_names: list[str], participant_descriptions: list[str],
        output_message_queue: asyncio.Queue[BaseAgentEvent | BaseChatMessage | GroupChatTermination],
        termination_condition: TerminationCondition | None, max_turns: int | None, message_factory: MessageFactory,
    ) -> Callable[[], ParallelConversationManager]:
        def _factory() -> ParallelConversationManager:
            return ParallelConversationManager(name, group_topic_type, output_topic_type, participant_topic_types,
                                               participant_names, participant_descriptions, output_message_queue,
                                               termination_condition, max_turns, message_factory,
                                               self._emit_team_events)

        return _factory
