"""Forms of the opt-out pages. Every limit here is also a defence: a field that is too
long or a country outside the list is a 400 with the reason shown, never a 500."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from core.countries import EU_EEA, country_choices

REASON_MAX = 2000

# Django's own messages for these rules exist in English only for some of our languages
# (Maltese has no Django catalog at all), so the pages carry their own.
_TOO_LONG = _("This is too long: at most %(limit_value)d characters (it has %(show_value)d).")
_NO_NUL = _("The text cannot contain null characters.")
TEXT_ERRORS = {"max_length": _TOO_LONG, "null_characters_not_allowed": _NO_NUL}


class ReasonField(forms.CharField):
    def __init__(self, **kwargs) -> None:
        super().__init__(
            label=_("Your reason (optional)"),
            help_text=_("You do not have to give a reason. Your objection counts either way."),
            required=False,
            max_length=REASON_MAX,
            strip=True,
            widget=forms.Textarea(attrs={"rows": 4}),
            error_messages=TEXT_ERRORS,
            **kwargs,
        )


class ObjectForm(forms.Form):
    # Sent by the page's button. A body without it (empty, or garbage a parser reduced to
    # nothing) is not a person pressing the button, and records nothing.
    object = forms.ChoiceField(choices=[("yes", "yes")], widget=forms.HiddenInput)
    reason = ReasonField()


class PublicObjectionForm(forms.Form):
    email = forms.EmailField(
        label=_("Your email address"),
        max_length=254,
        help_text=_("We send a link to this address to check that it is yours."),
        widget=forms.EmailInput(attrs={"autocomplete": "email"}),
        error_messages={
            **TEXT_ERRORS,
            "required": _("Enter your email address."),
            "invalid": _("Enter a valid email address, such as name@example.org."),
        },
    )
    country = forms.ChoiceField(
        label=_("Country where you live"),
        error_messages={
            "invalid_choice": _("Choose a country of the EU or the EEA from the list."),
            "required": _("Choose a country of the EU or the EEA from the list."),
        },
    )
    account_id = forms.CharField(
        label=_("Your account ID (optional)"),
        help_text=_("If you know it, it helps us find your account."),
        required=False,
        max_length=128,
        strip=True,
        error_messages=TEXT_ERRORS,
    )
    reason = ReasonField()

    def __init__(self, *args, language: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["country"].choices = [("", _("Choose your country"))] + country_choices(language)

    def clean_country(self) -> str:
        code = self.cleaned_data["country"]
        if code not in EU_EEA:  # the choices say so too; this names the rule outright
            raise forms.ValidationError(_("Choose a country of the EU or the EEA from the list."))
        return code

    def clean_account_id(self) -> str:
        value = self.cleaned_data["account_id"]
        if not value.isprintable():  # the rule of every subject id (optout.ledger.subject_id_valid)
            raise forms.ValidationError(_("An account ID cannot contain control characters."))
        return value


class WithdrawForm(forms.Form):
    confirm = forms.BooleanField(
        label=_("Yes, I want to withdraw my objection."),
        error_messages={"required": _("Tick the box to confirm that you want to withdraw your objection.")},
    )
