"""What a generation run costs at a provider's prices, against the LLM budget the task description suggests.

The DCASE 2025 Task 6 rules (External Resources) allow LLM APIs "provided they are reasonably accessible to
everyone and incur minimal costs. For instance, a reasonable price would be equivalent to the total subscription
cost of a leading provider, approximately 15 to 25 USD, over the duration of the challenge (2.5 months)."
"""

from __future__ import annotations

from dataclasses import dataclass

# USD per million tokens, GPT-4o's list prices (prompt, completion): the model of the AISTAT 2025 system.
DEFAULT_PRICE_IN = 2.50
DEFAULT_PRICE_OUT = 10.00
# The task description's suggested LLM spending for the whole challenge, in USD.
BUDGET_USD = (15.0, 25.0)


@dataclass(frozen=True)
class CostEstimate:
    """The cost of the requests a dry run counted, and of the answers already in the journal, in USD.

    Args:
        prompt_tokens: estimated prompt tokens still to send.
        completion_tokens: estimated completion tokens still to receive.
        spent_prompt_tokens: prompt tokens of the answers already in the journal (as the server counted them).
        spent_completion_tokens: their completion tokens.
        price_in: USD per million prompt tokens.
        price_out: USD per million completion tokens.
    """

    prompt_tokens: int
    completion_tokens: int
    spent_prompt_tokens: int
    spent_completion_tokens: int
    price_in: float
    price_out: float

    @property
    def usd(self) -> float:
        """The requests still needed."""
        return (self.prompt_tokens * self.price_in + self.completion_tokens * self.price_out) / 1e6

    @property
    def spent_usd(self) -> float:
        """The answers already in the journal."""
        return (self.spent_prompt_tokens * self.price_in + self.spent_completion_tokens * self.price_out) / 1e6

    @property
    def total_usd(self) -> float:
        """Journal plus the requests still needed: what this output costs in all."""
        return self.usd + self.spent_usd

    @property
    def over_budget(self) -> bool:
        """True when the total passes the top of the task's suggested budget (``BUDGET_USD``)."""
        return self.total_usd > BUDGET_USD[1]

    def as_json(self) -> dict:
        """``{"usd", "spent_usd", "total_usd", "price_in", "price_out", "budget_usd", "over_budget"}``."""
        return {"usd": round(self.usd, 4), "spent_usd": round(self.spent_usd, 4),
                "total_usd": round(self.total_usd, 4), "price_in": self.price_in, "price_out": self.price_out,
                "budget_usd": list(BUDGET_USD), "over_budget": self.over_budget}


def estimate_cost(estimate: dict, spent: dict, price_in: float = DEFAULT_PRICE_IN,
                  price_out: float = DEFAULT_PRICE_OUT) -> CostEstimate:
    """The cost of a dry run's ``estimate`` (``prompt_tokens``, ``completion_tokens``) and of the journal's
    ``spent`` tokens (``prompt``, ``completion``) at the given prices (USD per million tokens)."""
    return CostEstimate(int(estimate["prompt_tokens"]), int(estimate["completion_tokens"]), int(spent["prompt"]),
                        int(spent["completion"]), float(price_in), float(price_out))
