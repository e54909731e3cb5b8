"""What ChatLongctx declares to the langchain-tests suites, once for the unit and the integration suite."""

MODEL_PARAMS = {"model": "smollm2-135m-instruct", "device": "cpu", "dtype": "float32"}  # float32 on CPU: exact greedy


class DeclaredFeatures:
    """Mixed in before a suite class so these answers override the suite's defaults."""

    @property
    def has_tool_calling(self):
        return True

    @property
    def has_tool_choice(self):
        return True

    @property
    def has_structured_output(self):
        return True

    @property
    def structured_output_kwargs(self):
        return {"method": "json_schema"}

    @property
    def returns_usage_metadata(self):
        return True

    @property
    def supports_json_mode(self):
        return True
