"""GET /models: the checkpoints this service can run, with their cards."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from model_zoo.card import ModelCard
from model_zoo.lookup import UnknownNameError
from model_zoo.registry import get_card, list_cards
from service.api.deps import SettingsDep, require_api_key
from service.errors import UnknownModel
from service.schemas import ErrorBody

router = APIRouter(prefix="/models", tags=["models"], dependencies=[Depends(require_api_key)])


@router.get("", response_model=list[ModelCard])
def models(settings: SettingsDep) -> list[ModelCard]:
    """Every model's card: architecture, input contract, training data, metrics, intended use."""
    return list_cards(settings.model_dir)


@router.get("/{name}", response_model=ModelCard, responses={404: {"model": ErrorBody}})
def model(name: str, settings: SettingsDep) -> ModelCard:
    """One model's card."""
    try:
        return get_card(name, settings.model_dir)
    except UnknownNameError as error:
        raise UnknownModel(str(error)) from None
